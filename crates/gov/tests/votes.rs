//! Governance records against a tally and a certificate: the votes that must not count do
//! not, the outcome does not depend on delivery, and a certificate stands on its own.

#![allow(clippy::unwrap_used)]
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use sov_core::{ContentId, Did, Signed, dagcbor};
use sov_gov::{Action, Book, Choice, Group, Member, Proposal, Status, Vote, verify};
use sov_identity::Keypair;

const T0: u64 = 1_800_000_000;

fn keys(n: u8) -> Vec<Keypair> {
    (1..=n).map(|i| Keypair::from_seed(&[i; 32])).collect()
}

fn group(members: &[(&Keypair, &str, u32)], rule: &str) -> Vec<u8> {
    let g = Group {
        name: "co-op".into(),
        created: T0,
        members: members
            .iter()
            .map(|(k, role, weight)| Member {
                did: k.did(),
                role: (*role).into(),
                weight: *weight,
            })
            .collect(),
        rule: rule.into(),
        voting_secs: 3600,
    };
    Signed::sign(g, members[0].0).unwrap().encode().unwrap()
}

fn propose(book: &Book, by: &Keypair, action: Action) -> Vec<u8> {
    Signed::sign(
        Proposal {
            group: *book.id(),
            action,
            created: T0 + 10,
            deadline: T0 + 10 + 3600,
            basis: book.current_basis(),
        },
        by,
    )
    .unwrap()
    .encode()
    .unwrap()
}

fn vote_at(by: &Keypair, proposal: ContentId, choice: Choice, cast: u64) -> Vec<u8> {
    Signed::sign(
        Vote {
            proposal,
            choice,
            cast,
        },
        by,
    )
    .unwrap()
    .encode()
    .unwrap()
}

fn vote(by: &Keypair, proposal: ContentId, choice: Choice) -> Vec<u8> {
    vote_at(by, proposal, choice, T0 + 20)
}

fn custom(book: &mut Book, by: &Keypair, text: &str) -> ContentId {
    let p = propose(book, by, Action::Custom { text: text.into() });
    book.add_proposal(&p, T0 + 10).unwrap().0
}

fn three() -> (Vec<Keypair>, Book) {
    let k = keys(3);
    let g = group(
        &[
            (&k[0], "member", 1),
            (&k[1], "member", 1),
            (&k[2], "member", 1),
        ],
        "2/3",
    );
    (k, Book::new(&g).unwrap())
}

#[test]
fn two_thirds_of_three_pass_on_the_second_yes_and_a_later_no_changes_nothing() {
    let (k, mut book) = three();
    let p = custom(&mut book, &k[0], "adopt the charter");
    let first = book
        .add_vote(&vote(&k[0], p, Choice::Yes), T0 + 20)
        .unwrap();
    assert_eq!(first.decided, None);
    assert_eq!(book.tally(&p, T0 + 20).unwrap().status, Status::Open);
    let second = book
        .add_vote(&vote(&k[1], p, Choice::Yes), T0 + 20)
        .unwrap();
    assert_eq!(second.decided, Some(Status::Passed));
    book.add_vote(&vote(&k[2], p, Choice::No), T0 + 30).unwrap();
    let t = book.tally(&p, T0 + 30).unwrap();
    assert_eq!(t.status, Status::Passed);
    assert_eq!(t.clauses[0].yes, 2);
    assert_eq!(t.clauses[0].no, 1);
    // The certificate carries the two yes votes only, and stands on its own.
    let cert = book.certificate(&p).unwrap();
    assert_eq!(cert.decided.votes.len(), 2);
    let v = verify(&cert.encode().unwrap()).unwrap();
    assert_eq!(
        (v.status, v.proposal, v.group),
        (Status::Passed, p, *book.id())
    );
}

#[test]
fn enough_no_votes_reject_and_the_deadline_expires_the_rest() {
    let (k, mut book) = three();
    let p = custom(&mut book, &k[0], "paint it red");
    book.add_vote(&vote(&k[1], p, Choice::No), T0 + 20).unwrap();
    let d = book
        .add_vote(&vote(&k[2], p, Choice::Abstain), T0 + 20)
        .unwrap();
    assert_eq!(d.decided, Some(Status::Rejected));
    assert_eq!(
        verify(&book.certificate(&p).unwrap().encode().unwrap())
            .unwrap()
            .status,
        Status::Rejected
    );

    let q = custom(&mut book, &k[1], "paint it blue");
    book.add_vote(&vote(&k[0], q, Choice::Yes), T0 + 20)
        .unwrap();
    assert_eq!(book.tally(&q, T0 + 3000).unwrap().status, Status::Open);
    assert_eq!(book.tally(&q, T0 + 4000).unwrap().status, Status::Expired);
    assert!(
        book.certificate(&q).is_err(),
        "an undecided proposal has no certificate"
    );
}

#[test]
fn votes_that_must_not_count_are_refused() {
    let (k, mut book) = three();
    let stranger = Keypair::from_seed(&[99; 32]);
    let p = custom(&mut book, &k[0], "one");
    let other = custom(&mut book, &k[0], "two");

    // A non-member.
    let e = book
        .add_vote(&vote(&stranger, p, Choice::Yes), T0 + 20)
        .unwrap_err();
    assert!(e.to_string().contains("not a member"), "{e}");
    // After the deadline.
    let e = book
        .add_vote(&vote_at(&k[1], p, Choice::Yes, T0 + 5000), T0 + 5000)
        .unwrap_err();
    assert!(e.to_string().contains("after the deadline"), "{e}");
    // A malleated signature (s + L: the same signature to a lax verifier).
    let good = vote(&k[1], p, Choice::Yes);
    let e = book.add_vote(&malleate(&good), T0 + 20).unwrap_err();
    assert!(e.to_string().contains("bad signature"), "{e}");
    // A vote for `other` counts for `other` only: it cannot be replayed onto `p`.
    book.add_vote(&vote(&k[1], other, Choice::Yes), T0 + 20)
        .unwrap();
    book.add_vote(&vote(&k[2], other, Choice::Yes), T0 + 20)
        .unwrap();
    assert_eq!(book.tally(&other, T0 + 20).unwrap().status, Status::Passed);
    assert_eq!(book.tally(&p, T0 + 20).unwrap().counted, vec![]);
    let mut forged = other_vote_as(&vote(&k[1], other, Choice::Yes), p);
    let e = book.add_vote(&forged, T0 + 20).unwrap_err();
    assert!(e.to_string().contains("bad signature"), "{e}");
    // Duplicated: the same vote twice counts once.
    book.add_vote(&good, T0 + 20).unwrap();
    let again = book.add_vote(&good, T0 + 20).unwrap();
    assert!(!again.new);
    assert_eq!(book.tally(&p, T0 + 20).unwrap().clauses[0].yes, 1);
    forged.clear();
}

#[test]
fn a_member_admitted_after_a_proposal_does_not_vote_on_it() {
    let (k, mut book) = three();
    let newcomer = Keypair::from_seed(&[42; 32]);
    let before = custom(&mut book, &k[0], "made before the admission");
    let admit = propose(
        &book,
        &k[0],
        Action::Admit {
            member: newcomer.did(),
            role: "member".into(),
            weight: 1,
        },
    );
    let (a, _) = book.add_proposal(&admit, T0 + 10).unwrap();
    book.add_vote(&vote(&k[0], a, Choice::Yes), T0 + 20)
        .unwrap();
    book.add_vote(&vote(&k[1], a, Choice::Yes), T0 + 20)
        .unwrap();
    assert!(book.membership().contains(&newcomer.did()));
    let e = book
        .add_vote(&vote(&newcomer, before, Choice::Yes), T0 + 20)
        .unwrap_err();
    assert!(e.to_string().contains("not a member"), "{e}");
    // A proposal made after it counts the newcomer, and four members need three yes.
    let after = custom(&mut book, &k[1], "made after");
    for key in [&newcomer, &k[0]] {
        book.add_vote(&vote(key, after, Choice::Yes), T0 + 20)
            .unwrap();
    }
    assert_eq!(book.tally(&after, T0 + 20).unwrap().status, Status::Open);
    book.add_vote(&vote(&k[2], after, Choice::Yes), T0 + 20)
        .unwrap();
    assert_eq!(book.tally(&after, T0 + 20).unwrap().status, Status::Passed);
    // Its certificate carries the admission with its votes; verified alone, it holds.
    let cert = book.certificate(&after).unwrap();
    assert_eq!(cert.changes.len(), 1);
    assert_eq!(
        verify(&cert.encode().unwrap()).unwrap().status,
        Status::Passed
    );
    // The removed can neither vote again nor come back.
    let remove = propose(
        &book,
        &k[1],
        Action::Remove {
            member: newcomer.did(),
        },
    );
    let (r, _) = book.add_proposal(&remove, T0 + 10).unwrap();
    for key in [&k[0], &k[1], &k[2]] {
        book.add_vote(&vote(key, r, Choice::Yes), T0 + 20).unwrap();
    }
    assert!(!book.membership().contains(&newcomer.did()));
    let back = propose(
        &book,
        &k[0],
        Action::Admit {
            member: newcomer.did(),
            role: "member".into(),
            weight: 1,
        },
    );
    let e = book.add_proposal(&back, T0 + 10).unwrap_err();
    assert!(e.to_string().contains("for good"), "{e}");
}

#[test]
fn a_certificate_with_a_vote_removed_or_altered_fails() {
    let (k, mut book) = three();
    let p = custom(&mut book, &k[0], "ship it");
    book.add_vote(&vote(&k[0], p, Choice::Yes), T0 + 20)
        .unwrap();
    book.add_vote(&vote(&k[2], p, Choice::Yes), T0 + 20)
        .unwrap();
    let cert = book.certificate(&p).unwrap();
    assert!(verify(&cert.encode().unwrap()).is_ok());

    let mut removed = cert.clone();
    removed.decided.votes.pop();
    let e = verify(&removed.encode().unwrap()).unwrap_err();
    assert!(e.to_string().contains("do not decide"), "{e}");

    let mut altered = cert.clone();
    let last = altered.decided.votes.len() - 1;
    altered.decided.votes[last] =
        serde_bytes::ByteBuf::from(flip_choice(&altered.decided.votes[last]));
    assert!(verify(&altered.encode().unwrap()).is_err());

    let mut twice = cert.clone();
    twice.decided.votes[1] = twice.decided.votes[0].clone();
    assert!(verify(&twice.encode().unwrap()).is_err());

    let mut other_group = cert.clone();
    other_group.group = serde_bytes::ByteBuf::from(group(&[(&k[1], "member", 1)], "1/1"));
    assert!(verify(&other_group.encode().unwrap()).is_err());

    assert!(verify(b"not a certificate").is_err());
}

#[test]
fn committees_each_need_their_share() {
    let k = keys(5);
    let g = group(
        &[
            (&k[0], "maintainers", 1),
            (&k[1], "maintainers", 1),
            (&k[2], "maintainers", 1),
            (&k[3], "contributors", 5),
            (&k[4], "contributors", 1),
        ],
        "maintainers 2/3 AND contributors majority",
    );
    let mut book = Book::new(&g).unwrap();
    let p = custom(&mut book, &k[3], "release 1.0");
    for key in [&k[0], &k[1]] {
        book.add_vote(&vote(key, p, Choice::Yes), T0 + 20).unwrap();
    }
    // Maintainers agree; the contributors have not spoken yet.
    assert_eq!(book.tally(&p, T0 + 20).unwrap().status, Status::Open);
    // The heavy contributor's yes is a majority of its committee's weight (5 of 6).
    let d = book
        .add_vote(&vote(&k[3], p, Choice::Yes), T0 + 20)
        .unwrap();
    assert_eq!(d.decided, Some(Status::Passed));
    // A maintainer's vote cannot be counted for the contributors: k[0..2] alone never pass.
    let q = custom(&mut book, &k[0], "maintainers alone");
    for key in [&k[0], &k[1], &k[2]] {
        book.add_vote(&vote(key, q, Choice::Yes), T0 + 20).unwrap();
    }
    assert_eq!(book.tally(&q, T0 + 20).unwrap().status, Status::Open);
    let d = book.add_vote(&vote(&k[3], q, Choice::No), T0 + 20).unwrap();
    assert_eq!(d.decided, Some(Status::Rejected));
}

#[test]
fn an_equivocator_counts_for_nothing() {
    let (k, mut book) = three();
    let p = custom(&mut book, &k[0], "split them");
    book.add_vote(&vote(&k[0], p, Choice::Yes), T0 + 20)
        .unwrap();
    book.add_vote(&vote(&k[0], p, Choice::No), T0 + 21).unwrap();
    let t = book.tally(&p, T0 + 30).unwrap();
    assert_eq!(t.equivocators, vec![k[0].did()]);
    assert!(t.counted.is_empty());
}

#[test]
fn proposals_that_make_no_sense_are_refused() {
    let (k, mut book) = three();
    let stranger = Keypair::from_seed(&[99; 32]);
    let e = book
        .add_proposal(
            &propose(&book, &stranger, Action::Custom { text: "hi".into() }),
            T0,
        )
        .unwrap_err();
    assert!(e.to_string().contains("not a member"), "{e}");
    let e = book
        .add_proposal(
            &propose(
                &book,
                &k[0],
                Action::Admit {
                    member: k[1].did(),
                    role: "member".into(),
                    weight: 1,
                },
            ),
            T0,
        )
        .unwrap_err();
    assert!(e.to_string().contains("already"), "{e}");
    let e = book
        .add_proposal(
            &propose(
                &book,
                &k[0],
                Action::Remove {
                    member: stranger.did(),
                },
            ),
            T0,
        )
        .unwrap_err();
    assert!(e.to_string().contains("not a member"), "{e}");
    let far = Signed::sign(
        Proposal {
            group: *book.id(),
            action: Action::Custom {
                text: "later".into(),
            },
            created: T0 + 100_000,
            deadline: T0 + 103_600,
            basis: vec![],
        },
        &k[0],
    )
    .unwrap()
    .encode()
    .unwrap();
    assert!(
        book.add_proposal(&far, T0)
            .unwrap_err()
            .to_string()
            .contains("future")
    );
    let unknown_basis = Signed::sign(
        Proposal {
            group: *book.id(),
            action: Action::Custom { text: "x".into() },
            created: T0,
            deadline: T0 + 60,
            basis: vec![sov_gov::record_id(b"nothing")],
        },
        &k[0],
    )
    .unwrap()
    .encode()
    .unwrap();
    assert!(matches!(
        book.add_proposal(&unknown_basis, T0),
        Err(sov_gov::Error::Unknown { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The tally depends on the set of votes only: any order, any repeats.
    #[test]
    fn the_tally_ignores_order_and_repeats(
        choices in proptest::collection::vec(0u8..4, 7),
        weights in proptest::collection::vec(1u32..5, 7),
        order in Just((0..14usize).collect::<Vec<_>>()).prop_shuffle(),
        repeats in proptest::collection::vec(0usize..14, 0..6),
    ) {
        let k = keys(7);
        let roles = ["ops", "ops", "ops", "data", "data", "data", "data"];
        let members: Vec<(&Keypair, &str, u32)> =
            k.iter().zip(roles).zip(&weights).map(|((k, r), w)| (k, r, *w)).collect();
        let g = group(&members, "ops 2/3 AND data majority quorum=1/2");
        let base = Book::new(&g).unwrap();
        let mut proto = base.clone();
        let p = custom(&mut proto, &k[0], "q");
        // Each member votes 0, 1 or (equivocating) 2 choices.
        let mut votes = Vec::new();
        for (i, c) in choices.iter().enumerate() {
            let pick = |n: u8| [Choice::Yes, Choice::No, Choice::Abstain][usize::from(n % 3)];
            if *c < 3 {
                votes.push(vote(&k[i], p, pick(*c)));
            }
            if *c == 3 || i == 6 && *c == 0 {
                votes.push(vote(&k[i], p, pick(*c + 1)));
            }
        }
        let mut delivered: Vec<Vec<u8>> = order.iter().filter_map(|i| votes.get(*i).cloned()).collect();
        delivered.extend(repeats.iter().filter_map(|i| votes.get(*i).cloned()));
        let mut a = proto.clone();
        for v in &votes { a.add_vote(v, T0 + 20).unwrap(); }
        let mut b = proto.clone();
        for v in &delivered { b.add_vote(v, T0 + 20).unwrap(); }
        let (ta, tb) = (a.tally(&p, T0 + 20).unwrap(), b.tally(&p, T0 + 20).unwrap());
        prop_assert_eq!(&ta.clauses, &tb.clauses);
        prop_assert_eq!(&ta.counted, &tb.counted);
        prop_assert_eq!(&ta.equivocators, &tb.equivocators);
        if ta.equivocators.is_empty() {
            prop_assert_eq!(ta.status, tb.status);
            if ta.status.is_final() {
                let c = a.certificate(&p).unwrap();
                prop_assert_eq!(verify(&c.encode().unwrap()).unwrap().status, ta.status);
            }
        }
    }
}

/// The envelope as it is encoded (the fields `Signed` keeps private).
#[derive(Serialize, Deserialize)]
struct Envelope {
    tag: String,
    signer: Did,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
    body: Vote,
}

fn malleate(bytes: &[u8]) -> Vec<u8> {
    // L, the order of the Ed25519 group, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut env: Envelope = dagcbor::from_slice(bytes).unwrap();
    let mut carry = 0u16;
    for (s, l) in env.sig[32..].iter_mut().zip(L) {
        let x = u16::from(*s) + u16::from(l) + carry;
        *s = x as u8;
        carry = x >> 8;
    }
    dagcbor::to_vec(&env).unwrap()
}

fn other_vote_as(bytes: &[u8], proposal: ContentId) -> Vec<u8> {
    let mut env: Envelope = dagcbor::from_slice(bytes).unwrap();
    env.body.proposal = proposal;
    dagcbor::to_vec(&env).unwrap()
}

fn flip_choice(bytes: &[u8]) -> Vec<u8> {
    let mut env: Envelope = dagcbor::from_slice(bytes).unwrap();
    env.body.choice = if env.body.choice == Choice::Yes {
        Choice::No
    } else {
        Choice::Yes
    };
    dagcbor::to_vec(&env).unwrap()
}

#[test]
fn the_gateway_policy_is_the_last_passed_one_and_gives_by_did_role_and_membership() {
    use sov_gov::{GatewayRule, Grantee, gateway_scopes};
    let k = keys(4);
    let g = group(
        &[
            (&k[0], "maintainers", 1),
            (&k[1], "contributors", 1),
            (&k[2], "contributors", 1),
        ],
        "2/3",
    );
    let mut book = Book::new(&g).unwrap();
    assert!(book.gateway_policy().is_none());
    let client = &k[3];
    let rules = |scope: &str| {
        vec![
            GatewayRule {
                who: Grantee::Did(client.did()),
                scopes: vec![scope.into()],
            },
            GatewayRule {
                who: Grantee::Role("maintainers".into()),
                scopes: vec!["gov:vote".into()],
            },
            GatewayRule {
                who: Grantee::Members,
                scopes: vec!["infer".into()],
            },
        ]
    };
    let pass = |book: &mut Book, created: u64, scope: &str| {
        let p = Signed::sign(
            Proposal {
                group: *book.id(),
                action: Action::Gateway {
                    rules: rules(scope),
                },
                created,
                deadline: created + 3600,
                basis: book.current_basis(),
            },
            &k[0],
        )
        .unwrap()
        .encode()
        .unwrap();
        let id = book.add_proposal(&p, created).unwrap().0;
        for v in &k[..2] {
            book.add_vote(&vote_at(v, id, Choice::Yes, created + 1), created + 1)
                .unwrap();
        }
        id
    };
    let later = pass(&mut book, T0 + 100, "embed");
    let earlier = pass(&mut book, T0 + 50, "predict");
    // Passed after, made before: the later-made policy stays in force.
    let (id, r) = book.gateway_policy().unwrap();
    assert_eq!(id, later);
    assert_ne!(id, earlier);
    let m = book.membership();
    assert_eq!(
        gateway_scopes(r, &client.did(), m.seat(&client.did())),
        ["embed"]
    );
    assert_eq!(
        gateway_scopes(r, &k[0].did(), m.seat(&k[0].did())),
        ["gov:vote", "infer"]
    );
    assert_eq!(
        gateway_scopes(r, &k[1].did(), m.seat(&k[1].did())),
        ["infer"]
    );
    // A policy that gives admin does not check.
    let admin = Action::Gateway {
        rules: vec![GatewayRule {
            who: Grantee::Members,
            scopes: vec!["admin".into()],
        }],
    };
    assert!(admin.validate().is_err());
    assert_eq!(
        "role:maintainers=gov:vote,infer"
            .parse::<GatewayRule>()
            .unwrap(),
        GatewayRule {
            who: Grantee::Role("maintainers".into()),
            scopes: vec!["gov:vote".into(), "infer".into()],
        }
    );
}
