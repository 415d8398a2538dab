"""Password hashing (scrypt, via werkzeug) and the password rules.

The rules (docs/security.md): 10 to 256 characters; not a well-known password or a common word
dressed up with digits and symbols ("Password123!"); not one character repeated, not a run of
the keyboard or of digits; and not containing the person's own name or email address. The
list below is short and written by hand (no download at run time, no licence question); it
catches the passwords that guessing tools try first, not every breached one.
"""

from __future__ import annotations

import re

from werkzeug.security import check_password_hash, generate_password_hash

from .errors import ValidationError

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256

# Words people build passwords around; a password that is one of these with digits or symbols
# around it ("Welcome2024!", "!!monkey12345") is refused.
_COMMON_WORDS = """
    password passw0rd pa55word passwort motdepasse contrasena wachtwoord
    qwerty qwertz azerty qwertyuiop asdfgh asdfghjkl zxcvbnm qazwsx qweasd
    letmein welcome iloveyou admin administrator root login master secret
    changeme default guest test tester user access trustno abc abcdef abcdefgh
    football baseball soccer hockey basketball dragon monkey shadow sunshine princess
    superman batman starwars pokemon jordan michael charlie summer winter autumn spring
    freedom whatever hello hellothere goodbye computer internet iloveu lovely loveme
    flower cheese chocolate cookie butterfly purple orange banana
    deliberate deliberation coalition consultation
"""
COMMON_WORDS = frozenset(_COMMON_WORDS.split())

# Whole passwords of 10 or more characters that top the published lists of leaked passwords.
_COMMON_PASSWORDS = """
    1234567890 0123456789 9876543210 12345678910 123456789a a123456789 1234567891
    123456789q q123456789 1234567890q 1q2w3e4r5t 1q2w3e4r5t6y 1qaz2wsx3edc zaq12wsx
    zaq1zaq1zaq1 1qazxsw23edc qwertyuiop qwertyuiop123 qwerty123456 qwerty1234
    asdfghjkl1 asdfghjkl123 zxcvbnm123 1qaz2wsx1qaz2wsx
    password12 password123 password1234 password12345 passw0rd123 password01
    iloveyou12 iloveyou123 iloveyou1234 letmein123 welcome123 welcome1234
    administrator admin12345 admin123456 abc1234567 abcd123456 abcdefghij
    football123 baseball123 superman123 princess123 sunshine123 starwars123
    monkey1234 dragon1234 master1234 michael123 charlie123 trustno1234 changeme123
    qweasdzxc123 1234qwerasdf qwer1234asdf 147258369 1478963250 7894561230 1593572468
    11111111111 1111111111 0000000000 2222222222 1212121212 1231231234 123123123123
    1234512345 1122334455 1020304050 123456123456 987654321a
    correcthorsebatterystaple thequickbrownfox
"""
COMMON_PASSWORDS = frozenset(_COMMON_PASSWORDS.split())

_SEQUENCES = (
    "abcdefghijklmnopqrstuvwxyz",
    "01234567890",
    "qwertyuiopasdfghjklzxcvbnm",
    "qwertzuiopasdfghjklyxcvbnm",
    "azertyuiopqsdfghjklmwxcvbn",
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
)

COMMON_MESSAGE = (
    "That password is one of the first that people trying to break in would guess. "
    "A few unrelated words work well."
)


def _compact(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.casefold())


def _is_sequence(compact: str) -> bool:
    if len(set(compact)) <= 2:
        return True  # "aaaaaaaaaa", "abababababab"
    return any(compact in sequence or compact in sequence[::-1] for sequence in _SEQUENCES)


def is_common_password(password: str) -> bool:
    """Whether the password is on the bundled list, a common word dressed up, or a sequence."""
    lowered = password.strip().casefold()
    compact = _compact(password)
    if lowered in COMMON_PASSWORDS or compact in COMMON_PASSWORDS:
        return True
    # Strip digits and symbols around a single word: "P@ssword2024!" -> "p@ssword" -> "password".
    core = re.sub(r"^[\W\d_]+|[\W\d_]+$", "", lowered)
    core = core.translate(str.maketrans("@$0134!", "asoleai"))
    return core in COMMON_WORDS or _is_sequence(compact)


def _personal_parts(email: str | None, name: str | None) -> list[str]:
    parts = []
    if email and "@" in email:
        local = _compact(email.split("@", 1)[0])
        if len(local) >= 4:
            parts.append(local)
    if name:
        whole = _compact(name)
        if len(whole) >= 4:
            parts.append(whole)
        parts += [word for word in (_compact(w) for w in name.split()) if len(word) >= 4]
    return parts


def check_password_rules(
    password: str, *, email: str | None = None, name: str | None = None
) -> None:
    """Refuse passwords too short or too long, well-known, or built from the name or email."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(f"Use a password of at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationError(f"Use a password of at most {MAX_PASSWORD_LENGTH} characters.")
    if email and password.strip().casefold() == email.strip().casefold():
        raise ValidationError("Your password must not be your email address.")
    compact = _compact(password)
    for part in _personal_parts(email, name):
        if part in compact:
            raise ValidationError("Your password must not contain your name or email address.")
    if is_common_password(password):
        raise ValidationError(COMMON_MESSAGE)


def hash_password(password: str) -> str:
    return generate_password_hash(password, method="scrypt")


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash or not isinstance(password, str):
        return False
    return check_password_hash(password_hash, password)
