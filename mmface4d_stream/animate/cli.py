"""`mmface4d animate {synth,train,eval,run}`: audio-driven face animation."""

from __future__ import annotations

import argparse
import json
import sys

from mmface4d_stream.errors import InputError

DEFAULT_LIVE_URL = "tcp://127.0.0.1:5556"


def cmd_synth(args: argparse.Namespace) -> int:
    from mmface4d_stream.animate.synthetic import write_synthetic_corpus

    if args.subjects < 1 or args.sequences < 1 or args.seconds <= 0:
        raise InputError("--subjects and --sequences must be at least 1 and --seconds positive")
    folders = write_synthetic_corpus(args.out, args.subjects, args.sequences, args.seconds, first_seed=args.seed,
                                     first_subject=args.first_subject)
    print(f"wrote {len(folders)} sequences to {args.out}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mmface4d_stream.animate.train import TrainConfig, train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, clip_frames=args.clip_frames, lr=args.lr,
                         val_fraction=args.val_fraction, seed=args.seed, n_components=args.components,
                         hidden=args.hidden, lookahead_ms=args.lookahead_ms, device=args.device,
                         cache_mb=args.cache_mb, max_minutes=args.minutes, audio_encoder=args.audio_encoder,
                         audio_encoder_rate=args.audio_encoder_rate, audio_encoder_window_s=args.audio_encoder_window)
    result = train(args.data, args.out, config, resume=args.resume, landmark_mapping=args.landmark_mapping,
                   regions_path=args.regions)
    val = "" if result.val_rmse_mm is None else f", validation vertex RMSE {result.val_rmse_mm:.3f} mm"
    print(f"wrote {result.model_path} after epoch {result.epochs} (loss {result.train_loss:.4g}{val}, "
          f"{result.minutes:.2f} min)", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mmface4d_stream.animate.animator import AnimationModel
    from mmface4d_stream.animate.evaluate import evaluate

    report = evaluate(AnimationModel.load(args.model, audio_encoder=args.audio_encoder), args.data)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(report.table())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from mmface4d_stream.animate.animator import AnimationModel
    from mmface4d_stream.animate.render_run import animate_wav, load_neutral

    model = AnimationModel.load(args.model, audio_encoder=args.audio_encoder)
    neutral = load_neutral(args.neutral, model, args.neutral_frame)
    if args.subject is not None and args.subject not in model.subjects:
        raise InputError(f"unknown subject {args.subject!r}; the model knows {', '.join(model.subjects)}")
    faces = None
    if args.faces is not None:
        from mmface4d_stream.formats.faces import load_faces

        faces = load_faces(args.faces, model.n_vertices)
    live = args.audio == "mic" or args.publish is not None
    if not live:
        if args.out is None:
            raise InputError("--out PREFIX is required to animate a wav file (or give --publish URL)")
        result = animate_wav(model, args.audio, args.out, neutral=neutral, subject=args.subject,
                             video_dir=args.video, faces=faces)
        video = f"; video {result.video}" if result.video else ""
        print(f"wrote {result.frames} meshes ({result.seconds:.2f} s of audio) to {result.mesh_prefix}_{{0,1,2}}.nut"
              f"{video}", file=sys.stderr)
        return 0

    from mmface4d_stream.animate.live import LiveAnimator, MicrophoneSource, WavFileSource
    from mmface4d_stream.stream.publisher import MeshPublisher

    url = args.publish or DEFAULT_LIVE_URL
    source = MicrophoneSource(device=args.audio_device) if args.audio == "mic" else WavFileSource(args.audio)
    animator = LiveAnimator(model, neutral=neutral, subject=args.subject, faces=faces)
    try:
        publisher = MeshPublisher(url)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    with publisher:
        print(f"publishing meshes on {url} (Ctrl-C stops)", file=sys.stderr)
        result = animator.run(source, publisher, duration_s=args.duration)  # stops the source however it ends
    print(f"published {result.meshes} meshes over {result.seconds:.1f} s of audio ({result.meshes_per_s:.1f}/s); "
          f"latency capture->publish p50 {result.latency_ms_p50:.1f} ms, p95 {result.latency_ms_p95:.1f} ms, "
          f"max {result.latency_ms_max:.1f} ms", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    top = subparsers.add_parser(
        "animate", help="audio-driven face animation: train, evaluate, run (file or live microphone)",
        description="Learn speech -> face motion from MMFace4D-layout data (<seq>.wav beside a mesh nut triplet) "
                    "and drive a face from a wav file or a microphone.")
    sub = top.add_subparsers(dest="animate_command", metavar="ACTION")
    sub.required = True

    s = sub.add_parser("synth", help="write a light synthetic corpus (meshes + speech audio, no rendering)")
    s.add_argument("--out", required=True, help="output folder (OUT/subjectNN/SEQ/...)")
    s.add_argument("--subjects", type=int, default=4, help="number of subjects (default 4)")
    s.add_argument("--sequences", type=int, default=6, help="sequences per subject (default 6)")
    s.add_argument("--seconds", type=float, default=4.0, help="length of each sequence, s (default 4)")
    s.add_argument("--seed", type=int, default=0, help="first performance seed (default 0)")
    s.add_argument("--first-subject", type=int, default=0, help="first subject number (default 0)")
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train a model (progress bar, a checkpoint every epoch, --resume)")
    t.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of sequences")
    t.add_argument("--out", required=True, help="checkpoint path, e.g. model.pt")
    t.add_argument("--epochs", type=int, default=30, help="epochs (default 30)")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="training device (default cpu)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    t.add_argument("--batch-size", type=int, default=16, help="clips per batch (default 16)")
    t.add_argument("--clip-frames", type=int, default=60, help="frames per training clip (default 60)")
    t.add_argument("--lr", type=float, default=2e-3, help="learning rate (default 2e-3)")
    t.add_argument("--hidden", type=int, default=128, help="network width (default 128)")
    t.add_argument("--components", type=int, default=32, help="motion basis size K (default 32)")
    t.add_argument("--lookahead-ms", type=float, default=66.0, help="audio look-ahead, 0..100 ms (default 66)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="subjects held out for validation (default 0.2)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--cache-mb", type=float, default=1024.0, help="memory for decoded targets (default 1024)")
    t.add_argument("--landmark-mapping", default=None,
                   help="landmark_mapping2.json for topologies without MediaPipe points (BFM)")
    t.add_argument("--regions", default=None, help='JSON {"lips": [ids], "upper_face": [ids]} overriding the regions')
    t.add_argument("--audio-encoder", default=None, metavar="PATH",
                   help="a local TorchScript speech encoder, waveform (1, S) at 16 kHz -> (1, T, D), whose features "
                        "replace the log-mel ones (recorded in the model; nothing is downloaded)")
    t.add_argument("--audio-encoder-rate", type=float, default=None, metavar="HZ",
                   help="the encoder's frames per second when the module has no frame_rate_hz attribute (default 50)")
    t.add_argument("--audio-encoder-window", type=float, default=1.0, metavar="S",
                   help="seconds of audio each causal encoder call sees (default 1.0)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="LVE and FDD of a model and two baselines on a data folder")
    e.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of sequences")
    e.add_argument("--model", required=True, help="checkpoint from `animate train`")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--audio-encoder", default=None, metavar="PATH",
                   help="the audio encoder file, when the one recorded in the model has moved (same D and rate)")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("run", help="animate a wav (-> mesh nut triplet) or the microphone (-> mesh stream)")
    r.add_argument("--audio", required=True, help="a wav file, or `mic` for the microphone")
    r.add_argument("--model", required=True, help="checkpoint from `animate train`")
    r.add_argument("--out", default=None, help="output mesh prefix (PREFIX_{0,1,2}.nut) for a wav")
    r.add_argument("--neutral", default=None,
                   help="neutral face: a mesh nut PREFIX or X.npy (default: the training set's mean subject)")
    r.add_argument("--neutral-frame", type=int, default=0, help="frame of a --neutral PREFIX (default 0)")
    r.add_argument("--subject", default=None, help="a training subject's speaking style (default: the mean)")
    r.add_argument("--video", default=None, metavar="DIR", help="also render DIR/output.mp4 with the audio")
    r.add_argument("--faces", default=None, help="triangles (.npy/.pkl/.obj) when the model holds none")
    r.add_argument("--publish", default=None, metavar="URL",
                   help=f"publish meshes live (default for --audio mic: {DEFAULT_LIVE_URL}); a wav then plays "
                        "in real time through the microphone's path")
    r.add_argument("--audio-device", default=None, help="sounddevice input device (name or index)")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds of audio")
    r.add_argument("--audio-encoder", default=None, metavar="PATH",
                   help="the audio encoder file, when the one recorded in the model has moved (same D and rate)")
    r.set_defaults(func=cmd_run)
