"""Audio signals: voice activity, microphone recording and the synthetic speech signal.

- `voice`: where the speech starts and ends, in frames (silero-vad; `k4a.preprocess` clips to it).
- `recorder`: `AudioRecorder`, the microphone streamed to disk and aligned to the cameras' host
  clock (`AudioClock`) for live sessions.
- `speech`: `speech_audio`, a speech-like signal for the sample subject's performance.

The wav file itself (`read_wav`, `write_wav`, `load_audio_16k`, `WavStreamWriter`) is a dataset
file like the others and lives with them in `formats.audio`.
"""
