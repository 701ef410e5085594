"""Audio-driven face animation on MMFace4D-layout data (the dataset's purpose, arXiv 2303.09797).

Modules, one capability each:
  features   causal log-mel features in torch; frame/feature alignment
  data       finding `<seq>.wav` + mesh nut triplets, subjects, subject-disjoint splits
  regions    lips and upper face of any topology with MediaPipe-like anchors
  pca        Frequent Directions sketch (streaming motion basis)
  corpus     pose removal, neutral faces, motion basis, per-sequence targets
  model      the causal network (offline and streaming)
  animator   a trained model: checkpoint I/O, offline and streaming inference
  train      the training loop (checkpoints, resume)
  metrics    LVE and FDD;  evaluate: model vs baselines
  synthetic  a light generator of ground-truth meshes + speech audio
  render_run offline `run`: wav -> mesh nut triplet (+ video with the audio)
  video      muxing the audio into a rendered mp4
  live       microphone (or a wav through the same path) -> mesh publisher
  cli        `mmface4d animate ...`
"""
