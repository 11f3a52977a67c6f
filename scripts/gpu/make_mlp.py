#!/usr/bin/env python3
"""Writes models/mlp-check/model.onnx: a multilayer perceptron over the fraud topology's 15
features (15 -> 1024 -> 512 -> 256 -> 2, ReLU, softmax), random He-initialised weights (seed 7),
for the CUDA check (scripts/gpu/check.sh): large enough that a GPU's speed shows, made of
operators the CUDA execution provider runs (Gemm, Relu, Softmax). Needs the `onnx` package.

    python3 scripts/gpu/make_mlp.py [--out models/mlp-check/model.onnx]
"""
import argparse
import random

import onnx
from onnx import TensorProto, helper

FEATURES = [
    "amount", "tx_during_weekend", "tx_during_night",
    "customer_id_nb_tx_1day_window", "customer_id_avg_amount_1day_window",
    "customer_id_nb_tx_7day_window", "customer_id_avg_amount_7day_window",
    "customer_id_nb_tx_30day_window", "customer_id_avg_amount_30day_window",
    "terminal_id_nb_tx_1day_window", "terminal_id_risk_1day_window",
    "terminal_id_nb_tx_7day_window", "terminal_id_risk_7day_window",
    "terminal_id_nb_tx_30day_window", "terminal_id_risk_30day_window",
]
LAYERS = [len(FEATURES), 1024, 512, 256, 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="models/mlp-check/model.onnx")
    args = p.parse_args()
    rnd = random.Random(7)
    inits, nodes = [], []
    x = "input"
    for i, (n_in, n_out) in enumerate(zip(LAYERS, LAYERS[1:])):
        scale = (2.0 / n_in) ** 0.5
        w = [rnd.gauss(0.0, scale) for _ in range(n_in * n_out)]
        b = [rnd.gauss(0.0, 0.01) for _ in range(n_out)]
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [n_in, n_out], w))
        inits.append(helper.make_tensor(f"b{i}", TensorProto.FLOAT, [n_out], b))
        y = f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y]))
        if i < len(LAYERS) - 2:
            nodes.append(helper.make_node("Relu", [y], [f"r{i}"]))
            y = f"r{i}"
        x = y
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp_check",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", len(FEATURES)])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="weir")
    model.ir_version = 8
    helper.set_model_props(model, {"features": ",".join(FEATURES), "version": "mlp-check-v1"})
    onnx.checker.check_model(model)
    onnx.save(model, args.out)
    print(f"wrote {args.out}: layers {LAYERS}")


if __name__ == "__main__":
    main()
