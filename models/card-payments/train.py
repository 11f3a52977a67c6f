#!/usr/bin/env python3
"""Train the card-payments model on a weir training set and export it to ONNX with its card.

Input: a Parquet training set from `weir features export topologies/card-payments.toml`
(columns: the id, `event_time`, one UInt64 key column per entity, the Float64 feature columns in
the topology's `model.features` order, and the label column last: 1, 0, or -1 if none arrived).
Output: `model.onnx` (input `input`: float [batch, n_features]; outputs `label` int64 [batch],
`probabilities` float [batch, 2], column 1 = fraud), with the feature order in the ONNX metadata
property `features` (weir refuses a topology whose `model.features` differ), and `MODEL_CARD.md`.

Split by time: skip `--warmup-days` (windows incomplete), train on the next `--train-days`, skip
`--delay-days` (labels of the last training days not yet known), test on the rest.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

VERSION = "card-payments-v1"
DAY_MS = 86_400_000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--training-set", required=True)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--warmup-days", type=int, default=7)
    ap.add_argument("--train-days", type=int, default=30)
    ap.add_argument("--delay-days", type=int, default=7)
    args = ap.parse_args()
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from sklearn.ensemble import GradientBoostingClassifier
        from sklearn.metrics import average_precision_score, roc_auc_score
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError:
        sys.exit("train.py needs numpy, pyarrow, scikit-learn, skl2onnx, onnx: pip install pyarrow scikit-learn skl2onnx onnx")

    table = pq.read_table(args.training_set)
    label = table.column_names[-1]
    features = [f.name for f in table.schema if f.type == pa.float64()]
    t_ms = table.column("event_time").cast("int64").to_numpy()
    order = np.argsort(t_ms, kind="stable")
    t_ms = t_ms[order]
    y = table.column(label).to_numpy()[order].astype(np.int64)
    x = np.column_stack([table.column(f).to_numpy()[order] for f in features]).astype(np.float32)
    day = (t_ms - t_ms.min()) // DAY_MS
    if (y < 0).any():
        sys.exit(f"{int((y < 0).sum())} rows have no label")
    w, tr, dl = args.warmup_days, args.train_days, args.delay_days
    train = (day >= w) & (day < w + tr)
    test = day >= w + tr + dl
    model = GradientBoostingClassifier(n_estimators=60, max_depth=3, learning_rate=0.1, random_state=0)
    model.fit(x[train], y[train])
    p = model.predict_proba(x[test])[:, 1]
    auc, ap_ = roc_auc_score(y[test], p), average_precision_score(y[test], p)

    onx = to_onnx(model, initial_types=[("input", FloatTensorType([None, len(features)]))],
                  options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    for k, v in {"features": ",".join(features), "version": VERSION}.items():
        prop = onx.metadata_props.add()
        prop.key, prop.value = k, v
    out = Path(args.out)
    (out / "model.onnx").write_bytes(onx.SerializeToString())
    card = f"""# Model card: `{VERSION}`

- **Task**: probability that a card payment is fraudulent (binary classification), for
  `topologies/card-payments.toml` (the second shipped topology: string ids, RFC 3339 times,
  integer cents, a categorical country).
- **Model**: scikit-learn `GradientBoostingClassifier` (60 trees, depth 3, learning rate 0.1),
  exported with skl2onnx (opset 17, ai.onnx.ml 3).
- **Input** `input`: float `[batch, {len(features)}]`, in this order (ONNX metadata `features`):
{chr(10).join(f"  {i + 1}. `{f}`" for i, f in enumerate(features))}
- **Outputs**: `label` int64 `[batch]`; `probabilities` float `[batch, 2]`, column 1 = fraud.
- **Training set**: `weir features export topologies/card-payments.toml --generate-days 60 --seed 7`
  (the handbook's simulation, 5000 cards and 10000 merchants, written as payments):
  {len(y)} payments, {int(y.sum())} fraudulent ({100 * y.mean():.2f}%).
- **Split**: days 0-{w - 1} warm-up, train days {w}-{w + tr - 1} ({int(train.sum())} payments), {dl}-day delay,
  test from day {w + tr + dl} ({int(test.sum())} payments, {int(y[test].sum())} fraudulent).
- **Test metrics**: ROC AUC **{auc:.3f}**, average precision **{ap_:.3f}**.
- **Limits**: simulated data; the country risk table is made up for the example.
- **Reproduce**: `make model-payments`.
"""
    (out / "MODEL_CARD.md").write_text(card)
    print(f"wrote {out / 'model.onnx'}: {len(features)} features, test ROC AUC {auc:.3f}, AP {ap_:.3f}")


if __name__ == "__main__":
    main()
