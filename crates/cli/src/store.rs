//! `sov store check` and `sov store repair`: the store's health, and rebuilding its index
//! from the pack files. Both work on the home directly, so no node may be running.

use anyhow::bail;

use crate::{
    home::Home,
    output::{bytes, note, say},
};

/// `sov store check`
pub fn check(home: &Home, json: bool) -> anyhow::Result<bool> {
    refuse_if_running(home)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let report = rt.block_on(sov_node::check_store(&home.dir, home.keypair()?))?;
    if json {
        say!(
            "{}",
            serde_json::json!({
                "ok": report.ok(),
                "objects": report.objects,
                "blocks": report.blocks,
                "bytes": report.bytes,
                "damaged_blocks": report.damaged.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "incomplete_objects": report.incomplete.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            })
        )?;
    } else {
        say!(
            "{} objects, {} blocks ({}) checked against their CIDs",
            report.objects,
            report.blocks,
            bytes(report.bytes)
        )?;
        for c in &report.damaged {
            say!("damaged block {c}")?;
        }
        for c in &report.incomplete {
            say!("incomplete object {c} (a block it needs is missing or damaged)")?;
        }
        if report.ok() {
            note!("the store is intact");
        } else {
            note!(
                "the store is damaged: `sov store repair` rebuilds the index from what is intact; other copies on peers can restore the rest"
            );
        }
    }
    Ok(report.ok())
}

/// `sov store repair`
pub fn repair(home: &Home, json: bool) -> anyhow::Result<()> {
    refuse_if_running(home)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let r = rt.block_on(sov_node::repair_store(&home.dir, home.keypair()?))?;
    if json {
        say!(
            "{}",
            serde_json::json!({
                "old_index": r.old_index.as_ref().map(|p| p.display().to_string()),
                "packs": r.packs,
                "unframed_packs": r.unframed_packs,
                "blocks": r.blocks,
                "damaged_blocks": r.damaged,
                "skipped_bytes": r.skipped_bytes,
                "objects": r.objects,
                "incomplete_objects": r.incomplete,
                "grants": r.grants,
                "pinned": r.pinned,
            })
        )?;
        return Ok(());
    }
    if let Some(old) = &r.old_index {
        note!("the old index is kept in {}", old.display());
    }
    say!(
        "read {} packs: {} intact blocks, {} damaged, {} bytes passed over",
        r.packs,
        r.blocks,
        r.damaged,
        r.skipped_bytes
    )?;
    say!(
        "rebuilt {} objects with {} grants; {} manifests without all their chunks were left out",
        r.objects,
        r.grants,
        r.incomplete
    )?;
    if r.unframed_packs > 0 {
        note!(
            "{} packs from before sov wrote block frames cannot be re-indexed; they were moved to store.packs/unindexed/",
            r.unframed_packs
        );
    }
    if r.pinned > 0 {
        note!(
            "{} of your own objects are pinned again with no replica count (the counts were only in the index)",
            r.pinned
        );
    }
    Ok(())
}

fn refuse_if_running(home: &Home) -> anyhow::Result<()> {
    if crate::node::running(&home.dir).is_some() {
        bail!(
            "a node is running on {}: stop it first (the store must not be in use)",
            home.dir.display()
        );
    }
    Ok(())
}
