"""Refusals: what Ichigo answers when the sound it is given is not speech.

Two sources, one format (a list of distinct phrasings):

* :func:`refusal_pool` (``tiny``/``smoke``): every combination of an opening, a problem and a
  request from :mod:`ichigo_lib.data.prompts` (150 phrasings), whose words are all in the tiny
  world's vocabulary; a seeded sample of ``size`` of them.
* :func:`generate_refusals` (``full``): an OpenAI-compatible chat server (upstream: Qwen2.5-72B
  on vLLM, through Distilabel) writes them, one request per phrasing, through
  :class:`~ichigo_lib.llm_client.ChatClient` (on-disk cache, retries, timeouts).

:func:`is_refusal` decides whether a model's reply is a refusal (notebooks 05-07).
"""

from __future__ import annotations

import random
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ichigo_lib.config import Phase3DataConfig
from ichigo_lib.data.prompts import REFUSAL_OPENINGS, REFUSAL_PROBLEMS, REFUSAL_REQUESTS
from ichigo_lib.llm_client import ChatClient, ChatEndpoint, EndpointError, endpoint_from

URL_ENV = "ICHIGO_REFUSAL_URL"
MODEL_ENV = "ICHIGO_REFUSAL_MODEL"
MAX_REFUSAL_CHARS = 300

# Phrases that mark a reply as "I could not hear / understand the audio" (normalised text).
KEY_PHRASES = (
    "could not hear",
    "cannot hear",
    "can not hear",
    "couldnt hear",
    "cant hear",
    "unable to hear",
    "not able to hear",
    "did not catch",
    "didnt catch",
    "could not catch",
    "could not understand",
    "cannot understand",
    "couldnt understand",
    "cant understand",
    "unable to understand",
    "not clear enough",
    "could not make out",
    "cannot make out",
    "cant make out",
    "couldnt make out",
    "unable to make out",
    "inaudible",
    "unintelligible",
    "sounded like noise",
    "sounds like noise",
    "only noise",
    "just noise",
    "no speech",
    "not speech",
    "say that again",
    "repeat your question",
    "could you repeat",
    "can you repeat",
    "please repeat",
)


def normalise(text: str) -> str:
    """Lower case, apostrophes dropped, other punctuation as spaces, spaces collapsed."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def all_refusals() -> list[str]:
    """Every compositional phrasing, in a fixed order."""
    out = []
    for opening in REFUSAL_OPENINGS:
        for problem in REFUSAL_PROBLEMS:
            for request in REFUSAL_REQUESTS:
                out.append(f"{opening} {problem} {request}")
    return out


def refusal_pool(size: int | None = None, seed: int = 0) -> list[str]:
    """``size`` distinct phrasings (a seeded sample; all of them when ``size`` is None)."""
    pool = all_refusals()
    if size is None:
        return pool
    if not 1 <= size <= len(pool):
        raise ValueError(f"refusal pool size must be in 1..{len(pool)}, got {size}")
    return random.Random(f"refusals/{seed}").sample(pool, size)


_POOL = frozenset(normalise(r) for r in all_refusals())


def is_refusal(reply: str) -> bool:
    """Whether ``reply`` says it could not hear/understand: a pool phrasing (normalised) or a
    reply containing one of :data:`KEY_PHRASES`."""
    text = normalise(reply)
    if not text:
        return False
    return text in _POOL or any(phrase in text for phrase in KEY_PHRASES)


def refusal_endpoint(cfg: Phase3DataConfig, **options) -> ChatEndpoint:
    """The endpoint that writes refusals: ``cfg.refusal_url``/``refusal_model``, else
    $ICHIGO_REFUSAL_URL/$ICHIGO_REFUSAL_MODEL; a clear error when neither is set."""
    return endpoint_from(
        cfg.refusal_url,
        cfg.refusal_model,
        url_env=URL_ENV,
        model_env=MODEL_ENV,
        configure=(
            "e.g. Qwen2.5-72B-Instruct; set phase3_data.refusal_url and "
            "phase3_data.refusal_model (or use refusal_source 'pool')"
        ),
        api_key_env=cfg.refusal_api_key_env,
        **options,
    )


# What the writer is told: varied situations and tones give varied phrasings.
SITUATIONS = (
    "only background noise",
    "silence with some static",
    "garbled, distorted sound",
    "sounds that are not human speech",
    "a recording too faint to make out",
    "random noise",
    "speech too muffled to understand",
    "a broken, cut-up recording",
)
TONES = ("polite", "friendly", "brief", "apologetic", "warm", "plain", "helpful", "calm")


def refusal_request(index: int) -> list[dict[str, str]]:
    """The chat that asks for the ``index``-th refusal (varied so cached replies differ)."""
    situation = SITUATIONS[index % len(SITUATIONS)]
    tone = TONES[(index // len(SITUATIONS)) % len(TONES)]
    return [
        {"role": "system", "content": "You write the replies of a voice assistant."},
        {
            "role": "user",
            "content": (
                f"A user sent the assistant an audio message, but it contained {situation}. "
                f"Write the assistant's {tone} reply in one or two short sentences: say that "
                f"it could not hear or understand the audio and ask the user to try again. "
                f"Do not mention these instructions. Variant {index + 1}. Reply with the text "
                f"only, without quotes."
            ),
        },
    ]


def clean_refusal(text: str) -> str | None:
    """A written refusal stripped of quotes and space, or ``None`` when it is not usable (empty,
    several paragraphs, longer than :data:`MAX_REFUSAL_CHARS`, or not a refusal)."""
    text = text.strip().strip("\"'\u201c\u201d").strip()
    if not text or "\n" in text or len(text) > MAX_REFUSAL_CHARS or not is_refusal(text):
        return None
    return text


def _unusable(reply: str) -> str | None:
    """``accept`` for the writer's client: unusable replies are retried, never cached."""
    return None if clean_refusal(reply) is not None else "not a usable refusal"


def generate_refusals(
    client: ChatClient, n: int, max_requests: int | None = None
) -> tuple[list[str], dict[str, object]]:
    """Up to ``n`` distinct refusals written by ``client``'s model, and what it cost.

    Requests go out in rounds of the missing count, up to ``max_requests`` in all (default
    ``3 n``). Each request is retried by the client (errors and unusable replies alike, see
    :func:`clean_refusal`); one that still fails is counted in ``failed_requests`` (by reason in
    ``failure_reasons``) and its phrasing asked for again in the next round. Writing stops early
    when a whole round brings nothing new, so a dead endpoint costs one round. Only
    ``EndpointRefused`` (wrong URL, model or key) raises.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    max_requests = 3 * n if max_requests is None else max_requests
    seen: dict[str, str] = {}
    reasons: Counter[str] = Counter()
    duplicates = sent = 0
    while len(seen) < n and sent < max_requests:
        batch = min(n - len(seen), max_requests - sent)
        replies = client.complete_many(
            [refusal_request(sent + i) for i in range(batch)], _unusable, return_errors=True
        )
        sent += batch
        before = len(seen)
        for reply in replies:
            if isinstance(reply, EndpointError):
                reasons[reply.reason] += 1
            elif normalise(text := clean_refusal(reply)) in seen:
                duplicates += 1
            else:
                seen[normalise(text)] = text
        if len(seen) == before:
            break
    stats = {
        "requests_sent": sent,
        "duplicates": duplicates,
        "failed_requests": sum(reasons.values()),
        "failure_reasons": dict(sorted(reasons.items())),
    }
    return list(seen.values()), stats


def refusals_for(
    cfg: Phase3DataConfig, cache_dir: str | Path, **endpoint_options
) -> tuple[list[str], dict[str, object]]:
    """The phrasings a profile asks for (``refusal_source``), with a summary for the manifest.

    When the endpoint writes fewer than ``refusal_pool_size``, the rest come from
    :func:`refusal_pool` (``from_pool`` in the summary, and a line on stderr), never fewer.
    """
    if cfg.refusal_source == "pool":
        pool = refusal_pool(cfg.refusal_pool_size, cfg.seed)
        return pool, {"source": "pool", "phrasings": len(pool)}
    client = ChatClient(refusal_endpoint(cfg, **endpoint_options), cache_dir)
    written, stats = generate_refusals(client, cfg.refusal_pool_size)
    have = {normalise(t) for t in written}
    spare = [t for t in refusal_pool() if normalise(t) not in have]
    from_pool = spare[: cfg.refusal_pool_size - len(written)]
    if from_pool:
        print(
            f"refusal writer {client.endpoint.completions_url} ({client.endpoint.model}) wrote "
            f"{len(written)} of {cfg.refusal_pool_size} phrasings ({stats['failed_requests']} "
            f"failed requests: {stats['failure_reasons']}); {len(from_pool)} taken from the "
            f"built-in pool",
            file=sys.stderr,
        )
        written += from_pool
    summary = {
        "source": f"endpoint {client.endpoint.model}",
        "phrasings": len(written),
        "from_pool": len(from_pool),
        **stats,
        "requests": client.requests,
        "cache_hits": client.cache_hits,
    }
    return written, summary


def untokenizable(tokenizer, texts: Iterable[str]) -> list[str]:
    """Texts that ``tokenizer`` (transformers) can only encode with its unknown token: a word-level
    tiny tokenizer whose vocabulary lacks words of the refusals (an old notebook-00 run)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    return [t for t in texts if unk in tokenizer(t, add_special_tokens=False)["input_ids"]]
