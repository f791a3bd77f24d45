"""Fixed texts of the recipe: the eight transcription prompts of Ichigo v0.3.

v0.2 marked transcription with a special token, which hurt MMLU recovery; v0.3 replaced it by
these prompts, each followed by the audio turn (``recipe-facts.md``).
"""

TRANSCRIPTION_PROMPTS = (
    "Transcribe the following audio clip",
    "Convert the spoken words to text",
    "What is being said in this audio clip",
    "Transcribe the speech in this audio sample",
    "Please write down what is being said in the audio clip",
    "Generate a transcript from this sound file",
    "Recognize the speech in this audio clip",
    "Produce a text version of this audio recording",
)
