"""Audio: the sequence wav, voice activity, microphone recording and the synthetic speech signal.

- `wav`: `<seq>.wav` (mono 16 kHz float32 IEEE WAVE): `read_wav`, `write_wav`, `load_audio_16k`
  (resampled), and `WavStreamWriter`, which a killed recording leaves valid.
- `voice`: where the speech starts and ends, in frames (silero-vad; `preprocess` clips to it).
- `recorder`: `AudioRecorder`, the microphone streamed to disk and aligned to the cameras' host
  clock (`AudioClock`) for live sessions.
- `speech`: `speech_audio`, a speech-like signal for the sample subject's performance.
"""
