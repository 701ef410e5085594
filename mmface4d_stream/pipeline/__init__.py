"""Per-frame reconstruction stages: plain classes with `process(item) -> item` and `close()`.

Sources (`sources`) emit `FrameSet`s; `LandmarkStage` turns each camera into a `FaceCrop`;
`FitStage` fits the face model (`MeshFrame`); `SmoothStage` filters causally; sinks write the
mesh nut triplet (`MeshNutSink`) or publish over ZeroMQ (`PublishSink`). `run.reconstruct` chains
them in one process; `actors/` and `graphs/` put the same stages on Ray.
"""
