"""Speech: audio I/O and log-mel, WhisperVQ (real checkpoints and the tiny one), espeak-ng TTS."""
