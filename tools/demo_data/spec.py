"""What the demo data is: classes and their captions, prompt/answer templates, media sizes and splits.

Shared by every builder (and the tokenizer's training corpus), so each lives in one place only."""
from __future__ import annotations

# skimage.data name -> caption noun phrase. Colour photographs, plus coins (greyscale -> RGB).
CLASSES = {
    "astronaut": "an astronaut",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket on a launch pad",
    "hubble_deep_field": "galaxies in deep space",
    "immunohistochemistry": "stained tissue under a microscope",
    "stereo_motorcycle": "a motorcycle",
    "coins": "a tray of coins",
}
PROMPTS = {
    "image": ["<image>\nWhat is in this picture?", "<image>\nDescribe the image in a few words.",
              "What do you see in this photo?\n<image>", "<image>\nWhat is shown here?"],
    "video": ["<video>\nWhat does this video show?", "<video>\nDescribe the video in a few words.",
              "What is in this clip?\n<video>", "<video>\nWhat can be seen in this video?"],
}
ANSWERS = {
    "image": ["It shows {}.", "This is a picture of {}.", "I see {}.", "The image shows {}."],
    "video": ["It shows {}.", "This is a video of {}.", "I see {}.", "The video shows {}."],
}
# (samples per shard, train shards, seed base) per modality; val-000 uses a different seed.
SPLITS = {"image": (64, 4, 1000), "video": (48, 4, 2000),
          "audio": (32, 4, 3000), "multi_image": (64, 4, 4000), "audio_visual": (32, 4, 5000)}
SIZE, FRAMES, FPS = 64, 16, 8

# What a speaker says for each class (short, so a clip fits in 2 s at any of the speeds below).
SPOKEN = {"astronaut": "an astronaut", "chelsea": "a cat", "coffee": "a cup of coffee", "rocket": "a rocket",
          "hubble_deep_field": "galaxies", "immunohistochemistry": "a microscope",
          "stereo_motorcycle": "a motorcycle", "coins": "coins"}
VOICES = ["en-us+m1", "en-us+m3", "en-us+f2", "en-us+f4", "en-gb+m2", "en-gb+f3", "en-gb-scotland+m4", "en-029+f1"]
RATE, CLIP_SECONDS, MULTI_SIZE, AV_CRF = 16000, 2.0, 32, 32
ORDINALS = ["first", "second", "third"]
MORE_PROMPTS = {
    "audio": ["<audio>\nWhat is said in this recording?", "<audio>\nWhat does the speaker say?",
              "Listen: <audio>\nWhich words are spoken?", "<audio>\nTranscribe the recording."],
    "multi_image": ["{marks}\nWhat is in the {nth} picture?", "{marks}\nDescribe the {nth} image in a few words.",
                    "Look at these pictures: {marks}\nWhat does the {nth} one show?"],
    "said": ["<video>\n<audio>\nWhat is said in this video?", "<video><audio>\nWhat does the speaker say?",
             "<video>\n<audio>\nWhich words are spoken in this clip?"],
    "shown": ["<video>\n<audio>\nWhat does the video show?", "<video><audio>\nWhat can be seen in this clip?",
              "<video>\n<audio>\nDescribe what is shown in a few words."],
}
MORE_ANSWERS = {
    "audio": ["The speaker says: {}.", "They say {}.", "I hear \"{}\".", "The recording says {}."],
    "multi_image": ["The {nth} picture shows {}.", "It shows {}.", "In the {nth} one I see {}."],
    "said": ["The speaker says: {}.", "Someone says {}."],
    "shown": ["The video shows {}.", "It shows {}."],
}
MTIME = 1_700_000_000  # fixed tar mtime for reproducible shards
