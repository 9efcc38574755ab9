"""FedAvg over every member each round, in the clear or under SecAgg+ over the complete
graph; the time each round closes is appended to $SOVBENCH_LOG (one JSON line per round)."""

import json
import os
import time

from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from sovbench import task

app = ServerApp()


@app.main()
def main(grid, context):
    cfg = context.run_config
    rounds, n = int(cfg["num-server-rounds"]), int(cfg["num-clients"])
    log = os.environ.get("SOVBENCH_LOG")

    def evaluate(rnd, params, _cfg):
        acc = task.accuracy(params)
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"round": rnd, "t": time.time(), "accuracy": acc}) + "\n")
        return 0.0, {"accuracy": acc}

    strategy = FedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
        initial_parameters=ndarrays_to_parameters(task.init()),
        on_fit_config_fn=lambda rnd: {"round": rnd}, evaluate_fn=evaluate,
    )
    ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds),
                        strategy=strategy)
    if cfg["secagg"]:
        # Every member a neighbour of every other, threshold just over two thirds (what
        # sov's complete-graph SecAgg runs).
        fit = SecAggPlusWorkflow(num_shares=n, reconstruction_threshold=2 * n // 3 + 1,
                                 timeout=300)
        DefaultWorkflow(fit_workflow=fit)(grid, ctx)
    else:
        DefaultWorkflow()(grid, ctx)
