"""Self-supervised speech front-ends (wav2vec 2.0 / XLS-R / WavLM): raw waveform in, frame features out.

Its one job: build torchaudio's encoder from a preset or a weight file's own config, load the weights (Hugging
Face folder, fairseq checkpoint or state dict) without running pickled code, and give the last layer, one
hidden state or a learnable weighted sum of them, frozen or fine-tuned. The back-ends that consume the
features (SSL_AASIST, ECAPA-TDNN) live in their own files under models/. See docs/ssl.md.
"""
