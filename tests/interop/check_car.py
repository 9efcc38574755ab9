"""Check a CAR file written by `sov data export` with independent IPLD libraries
(PyPI multiformats + dag-cbor + blake3): every block's bytes hash to its CID, every
DAG-CBOR block is strict canonical DAG-CBOR, and the manifest links every raw block.

usage: python check_car.py FILE.car ROOT_CID
"""
import sys

import dag_cbor
from multiformats import CID, multihash


def varint(buf, pos):
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def b32(cid):
    return cid.encode("base32")


def main(path, root):
    data = open(path, "rb").read()
    n, pos = varint(data, 0)
    header = dag_cbor.decode(data[pos:pos + n])
    pos += n
    assert header["version"] == 1, header
    assert [b32(r) for r in header["roots"]] == [root], header["roots"]
    blocks = {}
    while pos < len(data):
        n, pos = varint(data, pos)
        frame = data[pos:pos + n]
        pos += n
        cid = CID.decode(frame[:36])
        body = frame[36:]
        assert cid.version == 1 and cid.hashfun.name == "blake3", cid
        assert multihash.digest(body, "blake3", size=32) == cid.digest, f"{cid} does not match its bytes"
        blocks[b32(cid)] = (cid, body)
    manifest = None
    for key, (cid, body) in blocks.items():
        if cid.codec.name == "dag-cbor":
            value = dag_cbor.decode(body)  # strict: refuses non-canonical encodings
            assert dag_cbor.encode(value) == body, f"{cid} is not canonical"
            if key == root:
                manifest = value
        else:
            assert cid.codec.name == "raw", cid
    assert manifest is not None, "root block missing"
    body = manifest["body"]
    linked = {b32(c["cid"]) for c in body["chunks"]}
    raw = {k for k, (c, _) in blocks.items() if c.codec.name == "raw"}
    assert linked == raw, "manifest links and raw blocks differ"
    grants = [k for k, (c, _) in blocks.items() if c.codec.name == "dag-cbor" and k != root]
    for g in grants:
        value = dag_cbor.decode(blocks[g][1])
        assert b32(value["body"]["object"]) == root
    print(f"ok: {len(blocks)} blocks ({len(raw)} raw, {len(grants)} grants, 1 manifest) verified "
          f"by multiformats/dag-cbor; tag={manifest['tag']}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
