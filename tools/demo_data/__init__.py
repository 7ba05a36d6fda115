"""Builders of anyalign's embedded default assets, one module per concern; tools/make_demo_data.py runs them.

  spec      what the demo is: classes, captions, prompt/answer templates, sizes, splits
  shards    balanced (chosen, rejected) pairs, JSON records and the seeded WebDataset tar writer
  models    tiny-lm (+ its BPE tokenizer), tiny-siglip, tiny-audio
  images    scikit-image photographs, data/image and data/multi_image
  video     Ken Burns clips (ffmpeg/libx264), data/video
  audio     espeak-ng speech, data/audio and data/audio_visual
  readmes   the README.md written next to the shards
"""
