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

# Inaudible input (phase 3): a refusal is an opening, a problem and a request, e.g.
# "Sorry, I did not catch that. Could you please repeat it?" (6 x 5 x 5 = 150 phrasings; no
# apostrophes, so the tiny word tokenizer keeps every word whole). Upstream had Qwen2.5-72B
# write its refusals; ``data.refusals`` builds the pool from these parts.
REFUSAL_OPENINGS = ("Sorry,", "I am sorry,", "Apologies,", "Unfortunately,", "Hmm,", "Hmm, sorry,")
REFUSAL_PROBLEMS = (
    "I could not hear what you said.",
    "I cannot make out any words in that audio.",
    "that sounded like noise to me, not speech.",
    "I did not catch that.",
    "the audio was not clear enough for me to understand.",
)
REFUSAL_REQUESTS = (
    "Could you please repeat it?",
    "Can you say that again?",
    "Please try again.",
    "Could you speak more clearly?",
    "Would you mind repeating your question?",
)
