"""A member: trains on its own part (partition-id of num-partitions in its node config)."""

from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod

from sovbench import task


class Member(NumPyClient):
    def __init__(self, i, n):
        self.i = i
        self.x, self.y = task.part(i, n)

    def fit(self, parameters, config):
        rnd = int(config.get("round", 0))
        return task.train(parameters, self.x, self.y, 1000 * rnd + self.i), len(self.y), {}


def client_fn(context):
    c = context.node_config
    return Member(int(c["partition-id"]), int(c["num-partitions"])).to_client()


def bytes_mod(msg, ctxt, call_next):
    """Count the payload bytes in and out (protobuf RecordDict, gRPC framing not included),
    appended to $SOVBENCH_BYTES."""
    import os

    from flwr.common.serde import recorddict_to_proto

    n_in = recorddict_to_proto(msg.content).ByteSize()
    out = call_next(msg, ctxt)
    n_out = recorddict_to_proto(out.content).ByteSize() if out.has_content() else 0
    path = os.environ.get("SOVBENCH_BYTES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{n_in},{n_out}\n")
    return out


def maybe_secagg(msg, ctxt, call_next):
    """SecAgg+ when the server runs it (its messages carry the protocol's configs)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp(client_fn=client_fn, mods=[bytes_mod, maybe_secagg])
