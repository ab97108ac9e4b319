"""SecretsDetector: every format found with its kind and exact span; prose and code that talk about
tokens and passwords without holding one stay clean.

The fake keys are built at run time from a fixed seed (random characters of the right alphabet and
length, a valid checksum where the format has one), so no key-shaped literal sits in the repository.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable

import pytest

from meshgate.guards.findings import Finding
from meshgate.guards.secrets import SecretsDetector, crc32_suffix, looks_random, shannon_entropy

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"
HEX = "0123456789abcdef"
UPPER_NUM = string.ascii_uppercase + "234567"

rng = random.Random(14)


def pick(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def github() -> str:
    body = pick(ALNUM, 30)
    return "ghp_" + body + crc32_suffix(body)


def npm() -> str:
    body = pick(ALNUM, 30)
    return "npm_" + body + crc32_suffix(body)


def jwt() -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": "1234567890", "iat": 1700000000}).encode())
    return f"{header}.{payload}.{b64url(rng.randbytes(32))}"


def discord() -> str:
    user_id = str(rng.randrange(10**17, 10**18)).encode()
    return f"{b64url(user_id)}.{pick(URLSAFE, 6)}.{pick(URLSAFE, 27)}"


def private_key() -> str:
    body = "\n".join(pick(B64, 64) for _ in range(5))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"


# kind, a fake secret, a context to embed it in ({} is the secret; the finding spans exactly it).
CASES: list[tuple[str, Callable[[], str], str]] = [
    ("aws_access_key", lambda: "AKIA" + pick(UPPER_NUM, 16), "AWS_ACCESS_KEY_ID={}\n"),
    ("aws_access_key", lambda: "ASIA" + pick(UPPER_NUM, 16), "the session key id is {}."),
    ("aws_secret_key", lambda: pick(B64, 40), 'aws_secret_access_key = "{}"\n'),
    ("github_token", github, "export GITHUB_TOKEN={}\n"),
    ("github_token", lambda: "github_pat_" + pick(ALNUM, 22) + "_" + pick(ALNUM, 59), "token: {}"),
    ("gitlab_token", lambda: "glpat-" + pick(URLSAFE, 20), "git clone with {} as password"),
    ("slack_token", lambda: f"xoxb-{pick(string.digits, 12)}-{pick(string.digits, 13)}-{pick(ALNUM, 24)}", "SLACK={}"),
    (
        "slack_webhook",
        lambda: f"https://hooks.slack.com/services/T{pick(UPPER_NUM, 8)}/B{pick(UPPER_NUM, 8)}/" + pick(ALNUM, 24),
        "post to {} please",
    ),
    ("stripe_key", lambda: "sk_live_" + pick(ALNUM, 24), "stripe.api_key = '{}'"),
    ("stripe_key", lambda: "rk_live_" + pick(ALNUM, 99), "{}"),
    ("openai_api_key", lambda: "sk-proj-" + pick(URLSAFE, 100) + pick(ALNUM, 4), "OPENAI_API_KEY={}\n"),
    ("openai_api_key", lambda: "sk-" + pick(ALNUM, 20) + "T3BlbkFJ" + pick(ALNUM, 20), '{{"key": "{}"}}'),
    ("anthropic_api_key", lambda: "sk-ant-api03-" + pick(URLSAFE, 93) + "AA", "x-api-key: {}"),
    ("google_api_key", lambda: "AIza" + pick(URLSAFE, 34) + "x", "maps key {} in the page"),
    (
        "azure_storage_key",
        lambda: pick(B64, 86) + "==",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={};EndpointSuffix=core.windows.net",
    ),
    ("twilio_api_key", lambda: "SK" + pick(HEX, 32), "TWILIO_API_KEY={}"),
    ("sendgrid_api_key", lambda: f"SG.{pick(URLSAFE, 22)}.{pick(URLSAFE, 43)}", "sendgrid: {}"),
    ("npm_token", npm, "//registry.npmjs.org/:_authToken={}\n"),
    ("pypi_token", lambda: "pypi-AgEIcHlwaS5vcmc" + pick(URLSAFE, 120), "password = {}\n"),
    ("discord_token", discord, "DISCORD_BOT_TOKEN={}"),
    (
        "telegram_bot_token",
        lambda: pick(string.digits[1:], 1) + pick(string.digits, 9) + ":AA" + pick(URLSAFE, 33),
        "bot = Bot('{}')",
    ),
    ("mailgun_api_key", lambda: "key-" + pick(HEX, 32), "MAILGUN_KEY={}"),
    ("square_token", lambda: "sq0atp-" + pick(URLSAFE, 22), "square access {}"),
    ("shopify_token", lambda: "shpat_" + pick(HEX, 32), "X-Shopify-Access-Token: {}"),
    ("heroku_api_key", lambda: "HRKU-AA" + pick(URLSAFE, 58), "HEROKU_API_KEY={}"),
    ("digitalocean_token", lambda: "dop_v1_" + pick(HEX, 64), "DIGITALOCEAN_TOKEN={}"),
    ("huggingface_token", lambda: "hf_" + pick(string.ascii_letters, 34), "HF_TOKEN={}"),
    ("private_key", private_key, "key file:\n{}\nend of file"),
    ("connection_string", lambda: f"postgres://app:{pick(ALNUM, 16)}@db.internal:5432/orders", "DATABASE_URL={}\n"),
    ("connection_string", lambda: f"mongodb+srv://svc:{pick(ALNUM, 12)}@cluster0.example.net/app", 'uri = "{}"'),
    ("basic_auth_url", lambda: f"https://deploy:{pick(ALNUM, 14)}@git.example.com", "remote {}/repo.git"),
    ("jwt", jwt, "Authorization: Bearer {}\n"),
    ("high_entropy_string", lambda: pick(ALNUM, 24), 'db_password = "{}"\n'),
]


@pytest.mark.parametrize(("kind", "make", "template"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_format_is_found_with_its_span(kind: str, make: Callable[[], str], template: str) -> None:
    secret = make()
    text = "Config notes follow.\n" + template.format(secret) + "\nThanks!"
    start = text.index(secret)
    findings = SecretsDetector().detect(text)
    assert [(f.kind, f.start, f.end) for f in findings] == [(kind, start, start + len(secret))]
    assert findings[0].detector == "secrets"
    assert 0.5 <= findings[0].score <= 1.0


def test_checksum_raises_the_github_score() -> None:
    good = github()
    bad = good[:-1] + ("A" if good[-1] != "A" else "B")
    [valid] = SecretsDetector().detect(good)
    [unverified] = SecretsDetector().detect(bad)
    assert valid.score > unverified.score >= 0.8


def test_fixed_prefix_scores_above_entropy() -> None:
    text = f'GITHUB_TOKEN={github()}\napi_token = "{pick(ALNUM, 32)}"'
    by_kind = {f.kind: f.score for f in SecretsDetector().detect(text)}
    assert by_kind["github_token"] > by_kind["high_entropy_string"]


def test_truncated_private_key_spans_its_body() -> None:
    block = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + pick(B64, 70) + "\n" + pick(B64, 30)
    text = block + "\n\n(the rest was cut)"
    [finding] = SecretsDetector().detect(text)
    assert (finding.kind, finding.start, finding.end) == ("private_key", 0, len(block))


def test_header_without_alg_is_not_a_jwt() -> None:
    header = b64url(json.dumps({"typ": "JWT", "kid": "abc"}).encode())
    payload = b64url(json.dumps({"sub": "x"}).encode())
    assert SecretsDetector().detect(f"{header}.{payload}.{b64url(rng.randbytes(16))}") == []


def test_placeholder_passwords_in_urls_are_not_secrets() -> None:
    text = (
        "Connect with postgres://user:password@localhost/db or mysql://root:${DB_PASS}@db/app or "
        "redis://:<password>@cache:6379/0."
    )
    assert SecretsDetector().detect(text) == []


def test_entropy_needs_a_secret_word_nearby() -> None:
    random_string = pick(ALNUM, 32)
    assert SecretsDetector().detect(f"The build id {random_string} passed all checks.") == []
    [finding] = SecretsDetector().detect(f"The api token {random_string} passed all checks.")
    assert finding.kind == "high_entropy_string"


PROSE_AND_CODE = [
    "Reset your password from the settings page. The token expires after one hour, and the API key "
    "can be rotated by an admin. Never share credentials; use the secret manager.",
    'def refresh(token: str, password: str | None = None) -> Session:\n    """Exchange a refresh token."""\n'
    "    secret = vault.read(path)\n    api_key = os.environ['API_KEY']\n    return Session(auth=(user, password))\n",
    "password_reset_token_lifetime_seconds = 3600\nTOKEN_TYPE = 'refresh_token'\nkey = 'user_id'\n",
    "auth: {type: oauth2, token_url: https://auth.example.com/oauth/token, scopes: [read, write]}\n",
    "The SHA-256 of the file is 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 (no secret).",
    "Connection: see https://docs.example.com/guides/connection-strings#postgres and mailto:support@example.com",
    "tokenizer = AutoTokenizer.from_pretrained('bert-base-uncased')\nTOKENS_PER_MINUTE = 90000\n",
    "secret_key_base is generated by `rails secret`; keep it out of version control.",
]


@pytest.mark.parametrize("text", PROSE_AND_CODE)
def test_prose_and_code_about_secrets_is_clean(text: str) -> None:
    assert SecretsDetector().detect(text) == []


def test_offsets_survive_characters_that_lowercase_longer() -> None:
    # "İ".lower() is two characters; the keyword search must not shift the spans after it.
    secret = pick(ALNUM, 28)
    text = "İİİ password: " + secret
    [finding] = SecretsDetector().detect(text)
    assert text[finding.start : finding.end] == secret


def test_entropy_helpers() -> None:
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == pytest.approx(2.0)
    assert looks_random(pick(ALNUM, 40))
    assert not looks_random("refresh_token_lifetime_in_seconds")
    assert not looks_random("SomeVeryLongClassNameForThings")


def test_findings_carry_no_values() -> None:
    finding = SecretsDetector().detect(f"GITHUB_TOKEN={github()}")[0]
    assert isinstance(finding, Finding)
    assert set(finding.as_dict()) == {"kind", "start", "end", "score", "detector"}


def test_env_password_with_symbols() -> None:
    secret = pick(ALNUM, 14) + "!*" + pick(ALNUM, 4)
    text = f"DEBUG=false\nDB_PASSWORD={secret}\n"
    [finding] = SecretsDetector().detect(text)
    assert (finding.kind, text[finding.start : finding.end]) == ("high_entropy_string", secret)
