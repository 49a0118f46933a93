"""Who acts: a person's id, whether a server authenticated it, and how two ids are compared.

Four-eyes compares *normalised* ids, so one person cannot pass for two by spelling: NFKC (fullwidth
``ａlice`` is ``alice``), casefold, invisible characters removed (zero-width spaces, joiners, bidi
marks: Unicode category Cf), and letters that only look Latin (Cyrillic ``і``, Greek ``ο``) read as
the Latin letter they imitate. An id that still mixes scripts after that is refused outright: no
reviewer needs one, and it is how a look-alike would try again.

Embedded mode (one person, a sqlite store) has no server to ask, so an id is whatever was typed and
``authenticated`` is False; the policy decides whether such an id may approve or promote. Against
the governance service (registry/service.py) the id is the MLflow server's authenticated user.
"""

from __future__ import annotations

import getpass
import unicodedata
from dataclasses import dataclass

from merge.errors import UsageError

# Letters of other scripts that render like a Latin letter (after NFKC and casefold), from Unicode's
# confusables for the scripts user names are typed in; enough for the look-alikes a keyboard makes.
_LOOKALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "ӏ": "l",
    "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "г": "r", "с": "c", "ѕ": "s", "т": "t", "ц": "u", "ѵ": "v",
    "ԝ": "w", "х": "x", "у": "y", "з": "3", "ԁ": "d", "ɡ": "g", "ո": "n", "ս": "u",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "ί": "i", "κ": "k", "ν": "v", "ο": "o", "ό": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w", "ϲ": "c", "ϳ": "j",
    "ı": "i", "ł": "l", "ø": "o", "ß": "ss",
})
_MAX_LEN = 256


def _script(ch: str) -> str:
    """A coarse script name for a letter: the first word of its Unicode name (LATIN, CYRILLIC, ...)."""
    return unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]


def normalise(value: str, what: str = "id") -> str:
    """The form two ids are compared in; UsageError for an empty, control-laden or mixed-script id."""
    if not isinstance(value, str):
        raise UsageError(f"{what}: a user id is text, not {type(value).__name__}")
    text = unicodedata.normalize("NFKC", value)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip().casefold()
    if not text:
        raise UsageError(f"{what} is empty; name the person, e.g. alice@example.com")
    if len(text) > _MAX_LEN:
        raise UsageError(f"{what} is {len(text)} characters long; a user id is at most {_MAX_LEN}")
    if any(unicodedata.category(ch).startswith(("C", "Z")) and ch != " " for ch in text):
        raise UsageError(f"{what} {value!r} holds control or separator characters; type the plain user id")
    scripts = {_script(ch) for ch in text if ch.isalpha()}
    if len(scripts) > 1:
        raise UsageError(f"{what} {value!r} mixes {' and '.join(sorted(s.title() for s in scripts))} letters; "
                         "type the user id in one script")
    return text.translate(_LOOKALIKES)


def same_person(a: str, b: str) -> bool:
    """Whether two ids name the same person once normalised (False when either is unusable)."""
    try:
        return normalise(a) == normalise(b)
    except UsageError:
        return False


@dataclass(frozen=True)
class Actor:
    """Who does something: ``id`` as given (shown), ``authenticated`` when a server vouched for it."""

    id: str
    authenticated: bool = False

    @property
    def key(self) -> str:
        return normalise(self.id)

    @classmethod
    def typed(cls, value: str | None, option: str) -> "Actor":
        """An unauthenticated id from a flag, else the operating-system user (embedded mode)."""
        value = value if value is not None and value.strip() else getpass.getuser()
        normalise(value, option)
        return cls(value.strip(), False)

    def label(self) -> str:
        return self.id if self.authenticated else f"{self.id} (unauthenticated)"
