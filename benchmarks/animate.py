"""Audio-driven animation on this CPU: train on synthetic speech, test on held-out seeds.

Writes a light synthetic corpus (`mmface4d animate synth`'s generator: ground-truth meshes of the
synthetic performer + its speech audio, no rendering), trains the default network for a fixed
budget of epochs (capped by --minutes), then measures LVE and FDD on held-out seeds (same
subjects, unseen performances and audio) for the model and both baselines (static neutral face;
the training set's mean motion), and the model's inference time per frame. Prints a markdown
table, or with --json one JSON object:
`{"model_path", "model": {"lve_mm", "fdd"}, "static_face": {...}, "mean_motion": {...}, ...}`.

Figures on the synthetic performer say the pipeline learns what audio carries about the mouth;
figures on real speech need the user's MMFace4D data (`mmface4d animate eval --data DIR`).

    python benchmarks/animate.py [--subjects 6] [--sequences 8] [--seconds 4] [--epochs 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmface4d_stream.animate.animator import AnimationModel
from mmface4d_stream.animate.evaluate import evaluate
from mmface4d_stream.animate.synthetic import write_synthetic_corpus
from mmface4d_stream.animate.train import TrainConfig, train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=6, help="synthetic subjects (default 6)")
    parser.add_argument("--sequences", type=int, default=8, help="training sequences per subject (default 8)")
    parser.add_argument("--heldout", type=int, default=3, help="held-out sequences per subject (default 3)")
    parser.add_argument("--seconds", type=float, default=4.0, help="sequence length, s (default 4)")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time cap, minutes (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one, kept for model_path)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    work = Path(args.out or tempfile.mkdtemp(prefix="mmface4d_animate_bench_"))
    progress = not args.json

    t0 = time.perf_counter()
    write_synthetic_corpus(work / "train", args.subjects, args.sequences, args.seconds, first_seed=0,
                           progress=progress)
    write_synthetic_corpus(work / "heldout", args.subjects, args.heldout, args.seconds, first_seed=10_000,
                           progress=progress)
    data_s = time.perf_counter() - t0
    model_path = work / "model.pt"
    t0 = time.perf_counter()
    result = train([work / "train"], model_path, TrainConfig(epochs=args.epochs, max_minutes=args.minutes),
                   progress=progress)
    train_min = (time.perf_counter() - t0) / 60.0
    report = evaluate(AnimationModel.load(model_path), [work / "heldout"], progress=progress)

    summary = {
        "model_path": str(model_path),
        "model": {"lve_mm": round(report.model.lve_mm, 3), "fdd": round(report.model.fdd_mm, 3)},
        "static_face": {"lve_mm": round(report.static_face.lve_mm, 3), "fdd": round(report.static_face.fdd_mm, 3)},
        "mean_motion": {"lve_mm": round(report.mean_motion.lve_mm, 3), "fdd": round(report.mean_motion.fdd_mm, 3)},
        "training_minutes": round(train_min, 2),
        "epochs": result.epochs,
        "inference_ms_per_frame": round(report.inference_ms_per_frame, 3),
        "train_sequences": args.subjects * args.sequences,
        "heldout_sequences": report.sequences,
        "heldout_frames": report.frames,
        "data_seconds": round(data_s, 1),
        "torch_threads": args.threads,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"synthetic corpus: {summary['train_sequences']} training sequences of {args.seconds:g} s "
          f"({args.subjects} subjects), {report.sequences} held-out sequences ({report.frames} frames); "
          f"{result.epochs} epochs in {train_min:.2f} min on {args.threads} CPU thread(s)\n")
    print("| predictor | LVE (mm) | FDD (mm) |")
    print("|---|---:|---:|")
    rows = (("model", "model"), ("static neutral face", "static_face"), ("training mean motion", "mean_motion"))
    for name, key in rows:
        print(f"| {name} | {summary[key]['lve_mm']:.3f} | {summary[key]['fdd']:.3f} |")
    print(f"\ninference: {summary['inference_ms_per_frame']:.3f} ms per frame (offline, whole sequence); "
          f"model: {model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
