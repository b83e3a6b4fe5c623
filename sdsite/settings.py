"""sdsite settings: every knob comes from the environment, with defaults that run offline.

The README lists each variable. Nothing secret lives in the repository: without
SECRET_KEY one is generated once and kept in DATA_DIR.
"""

import ipaddress
import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR") or BASE_DIR / "var").resolve()
MEDIA_ROOT = DATA_DIR / "media"
MODELS_DIR = Path(os.environ.get("SD_MODELS_DIR") or DATA_DIR / "models").resolve()
# LoRA files (.safetensors) that prompts may name as <lora:name:weight> (generator.pipelines.loras).
# An A1111 install (or any folder in its layout) whose models sdsite offers; each kind of
# model may also have its own folder (generator/pipelines/checkpoints.py scans them).
SD_WEBUI_DIR = (
    Path(os.environ["SD_WEBUI_DIR"]).expanduser() if os.environ.get("SD_WEBUI_DIR") else None
)


def _model_dir(variable: str, webui_part: str, default: Path | None = None) -> Path | None:
    if os.environ.get(variable):
        return Path(os.environ[variable]).expanduser().resolve()
    if SD_WEBUI_DIR is not None:
        return (SD_WEBUI_DIR / webui_part).resolve()
    return default


SD_CHECKPOINT_DIR = _model_dir("SD_CHECKPOINT_DIR", "models/Stable-diffusion")
SD_VAE_DIR = _model_dir("SD_VAE_DIR", "models/VAE")
SD_EMBEDDINGS_DIR = _model_dir("SD_EMBEDDINGS_DIR", "embeddings")
SD_ESRGAN_DIR = _model_dir("SD_ESRGAN_DIR", "models/ESRGAN")
# A1111's other upscaler folders (generator/pipelines/upscalers.py), and one folder of
# upscaler models of sdsite's own (any architecture spandrel recognises).
SD_REALESRGAN_DIR = _model_dir("SD_REALESRGAN_DIR", "models/RealESRGAN")
SD_SWINIR_DIR = _model_dir("SD_SWINIR_DIR", "models/SwinIR")
SD_DAT_DIR = _model_dir("SD_DAT_DIR", "models/DAT")
SD_UPSCALER_DIR = (
    Path(os.environ["SD_UPSCALER_DIR"]).expanduser().resolve()
    if os.environ.get("SD_UPSCALER_DIR")
    else None
)
SD_CONTROLNET_DIR = _model_dir("SD_CONTROLNET_DIR", "models/ControlNet")
SD_LORA_DIR = _model_dir("SD_LORA_DIR", "models/Lora", (DATA_DIR / "loras").resolve())
for folder in (DATA_DIR, MEDIA_ROOT, MODELS_DIR, DATA_DIR / "static"):
    folder.mkdir(parents=True, exist_ok=True)
# The database and the images are the service user's alone (0600 files, 0700
# folders): generate.py and the SQLite file are chmod-ed at first connection.
for folder in (DATA_DIR, MEDIA_ROOT):
    folder.chmod(0o700)
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700


def _secret_key() -> str:
    """SECRET_KEY from the environment (the same on every machine of a site), else this
    host's own, made once in DATA_DIR (one machine only)."""
    if key := os.environ.get("SECRET_KEY") or os.environ.get("DJANGO_SECRET_KEY"):
        return key
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "generator",
]

# Admin (and any) login: after SD_LOGIN_FAILURES wrong passwords for one user
# from one address, that pair is locked out for SD_LOGIN_COOLOFF_MINUTES
# (django-axes). A success resets the count.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("SD_LOGIN_FAILURES", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=env_float("SD_LOGIN_COOLOFF_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The same client address as every other limit: past trusted proxies only.
AXES_CLIENT_IP_CALLABLE = "generator.addresses.client_ip"
AXES_COOLOFF_MESSAGE = (
    "Too many failed logins for this account from this address: try again in "
    f"{AXES_COOLOFF_TIME.total_seconds() / 60:g} minutes."
)

MIDDLEWARE = [
    "generator.web.api_errors.JsonApiErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "generator.apikeys.ApiKeyMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "axes.middleware.AxesMiddleware",
]

# Content-Security-Policy (django-csp): scripts only from this site, never
# inline; the page draws previews and masks from blob: and data: URLs.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        # The admin's templates still carry a few style attributes.
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}

# Behind a TLS-terminating proxy (docs/deploy.md): trust its X-Forwarded-Proto,
# redirect plain HTTP (but not the probes), HSTS, and cookies for HTTPS only.
SD_BEHIND_HTTPS_PROXY = env_bool("SD_BEHIND_HTTPS_PROXY", False)
if SD_BEHIND_HTTPS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = int(os.environ.get("SD_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SD_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SD_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

CSRF_FAILURE_VIEW = "generator.web.api_errors.csrf_failure"

ROOT_URLCONF = "sdsite.urls"
WSGI_APPLICATION = "sdsite.wsgi.application"
ASGI_APPLICATION = "sdsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite is the embedded default. WAL lets the progress streams read while the
# worker writes; IMMEDIATE transactions take the write lock up front so two
# writers queue on the busy timeout instead of failing with "database is locked".
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}",
        conn_max_age=0,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
            "transaction_mode": "IMMEDIATE",
            # Seconds a write waits for another writer; past it the API answers 503.
            "timeout": env_float("SD_SQLITE_TIMEOUT", 30.0),
        }
    )

elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI, sync code runs on changing threads where persistent
    # connections (CONN_MAX_AGE) are seldom reused: a per-process psycopg pool
    # is. Size it for the web process's threads; the progress streams share a
    # single connection whatever their number.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": int(os.environ.get("SD_DB_POOL_SIZE", "8")),
        "timeout": 30,
    }

# The database cache: shared by every web process, so the request-rate limit
# holds across them (a Redis cache may replace it; see docs/deploy.md).
# Database sessions saved once per change (generator.browser_sessions): a POST that
# saves its browser session with its jobs is not written again after the view.
SESSION_ENGINE = "generator.browser_sessions"

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "sdsite_cache",
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"  # collectstatic target, for a front proxy
# Serve straight from the app and project folders: no collectstatic step for a
# local install, and the same files whether DEBUG is on or off.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
MEDIA_URL = "/media/"

# Where kept files live (results, previews, inputs, masks): this machine's media/ (the
# default), or an S3-compatible bucket (SD_MEDIA_STORAGE=s3: AWS, MinIO, Ceph RGW, R2), so
# web and workers on different machines share them (docs/deploy.md). boto3 reads
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION (or an instance role)
# itself. Objects are private: /media/ checks who asks, then redirects to a URL signed for
# SD_S3_URL_SECONDS. SD_MEDIA_STORAGE, SD_S3_BUCKET and SD_S3_PREFIX must be the same on
# every machine (a worker that disagrees with the web refuses to start).
SD_MEDIA_STORAGE = os.environ.get("SD_MEDIA_STORAGE", "local").strip().lower() or "local"
if SD_MEDIA_STORAGE not in ("local", "s3"):
    raise ImproperlyConfigured(f"SD_MEDIA_STORAGE={SD_MEDIA_STORAGE!r}: use local or s3.")
SD_S3_BUCKET = os.environ.get("SD_S3_BUCKET", "").strip()
SD_S3_ENDPOINT_URL = os.environ.get("SD_S3_ENDPOINT_URL", "").strip() or None
SD_S3_PREFIX = os.environ.get("SD_S3_PREFIX", "").strip().strip("/")
SD_S3_URL_SECONDS = int(os.environ.get("SD_S3_URL_SECONDS", "300"))
# Seconds one request to the bucket may take to connect, and to answer.
SD_S3_TIMEOUT = env_float("SD_S3_TIMEOUT", 5.0)
# Seconds a finished job keeps trying to save its image while the storage is away
# (with back-off, within SD_JOB_TIMEOUT) before it fails.
SD_MEDIA_RETRY_SECONDS = env_float("SD_MEDIA_RETRY_SECONDS", 120.0)
if SD_MEDIA_STORAGE == "s3":
    if not SD_S3_BUCKET:
        raise ImproperlyConfigured("SD_MEDIA_STORAGE=s3 needs SD_S3_BUCKET (the bucket's name).")
    MEDIA_STORAGE = {
        "BACKEND": "generator.s3_storage.MediaS3Storage",
        "OPTIONS": {
            "bucket_name": SD_S3_BUCKET,
            "endpoint_url": SD_S3_ENDPOINT_URL,
            "location": SD_S3_PREFIX,
            "default_acl": None,
            "file_overwrite": False,
            "querystring_auth": True,
            "querystring_expire": SD_S3_URL_SECONDS,
        },
    }
else:
    MEDIA_STORAGE = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": MEDIA_STORAGE,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "generator": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # Every 500 is logged with its traceback (the answer itself is JSON, no details).
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}

# --- Generation ---------------------------------------------------------------
# SD_MODELS offers several models (hub ids or folders), the first being the
# default; without it, SD_MODEL alone.
SD_MODELS = [m.strip() for m in os.environ.get("SD_MODELS", "").split(",") if m.strip()]
SD_MODEL = SD_MODELS[0] if SD_MODELS else os.environ.get("SD_MODEL", "demo")
SD_MODELS = SD_MODELS or [SD_MODEL]
SD_WORKER_PIPELINES = int(os.environ.get("SD_WORKER_PIPELINES", "2"))
# The memory a worker's loaded pipelines may take together, in MB (0: no limit), estimated
# from their weights' bytes: past it the least recently used is unloaded first.
SD_WORKER_MEMORY_MB = int(os.environ.get("SD_WORKER_MEMORY_MB", "0"))
# How long a queued job waits for the worker that has its model loaded before any worker
# takes it (and loads the model); 0: plain queue order.
SD_ROUTE_GRACE = float(os.environ.get("SD_ROUTE_GRACE", "5"))
# Up to this many queued jobs that differ only in their prompts and seeds run as
# one batched pipeline call (more images a minute on a GPU; see the README).
SD_WORKER_BATCH = max(1, int(os.environ.get("SD_WORKER_BATCH", "1")))
SD_BACKEND = os.environ.get("SD_BACKEND", "pytorch")
SD_DEVICE = os.environ.get("SD_DEVICE", "cpu")
# A worker whose heartbeat is older than the lease has lost its jobs; each
# session gets at most SD_MAX_ATTEMPTS workers before it is failed.
SD_WORKER_LEASE = env_float("SD_WORKER_LEASE", 30.0)
SD_MAX_ATTEMPTS = int(os.environ.get("SD_MAX_ATTEMPTS", "2"))
# Uploads (image-to-image, inpainting, PNG info): bytes before decoding, pixels
# from the header before the pixels are decoded. Several images per request.
SD_MAX_UPLOAD_MB = env_float("SD_MAX_UPLOAD_MB", 10.0)
SD_MAX_UPLOAD_PIXELS = int(os.environ.get("SD_MAX_UPLOAD_PIXELS", str(4096 * 4096)))
# Per owner (a user, an API key's user, an anonymous browser and its address):
# jobs queued or running at once, and requests to queue per period ("30/m",
# "500/h"; empty: none). Staff and unlimited keys are exempt (generator/web/limits.py).
SD_MAX_QUEUED_PER_OWNER = int(os.environ.get("SD_MAX_QUEUED_PER_OWNER", "4"))
SD_RATE_LIMIT = os.environ.get("SD_RATE_LIMIT", "30/m").strip()
SD_MAX_COUNT = int(os.environ.get("SD_MAX_COUNT", "4"))
# The A1111 (/sdapi/v1) and OpenAI (/v1) endpoints need an API key unless this
# is "off": only for a trusted single-user box, never on a network.
SD_API_AUTH = os.environ.get("SD_API_AUTH", "on").strip().lower() not in {"off", "0", "false"}
# The model each OpenAI model name that clients hard-code (dall-e-2, dall-e-3,
# gpt-image-1, any gpt-image-*) is served by, as "dall-e-3=MODEL,gpt-image-1=MODEL";
# a name not listed: the default model (SD_MODEL). GET /v1/models lists these names.
SD_OPENAI_MODEL_MAP = {}
for _entry in os.environ.get("SD_OPENAI_MODEL_MAP", "").split(","):
    _alias, _, _model = (part.strip() for part in _entry.partition("="))
    if _entry.strip() and not (_alias and _model):
        raise ImproperlyConfigured(f"SD_OPENAI_MODEL_MAP: {_entry.strip()!r} is not NAME=MODEL")
    if _alias:
        SD_OPENAI_MODEL_MAP[_alias] = _model
# The largest request body, refused (413) while it streams, on every route.
# 1: images, previews and inputs are served only to whoever may see their
# session (and staff); 0 (default): to anyone with the URL, a long random name.
SD_PRIVATE_MEDIA = env_bool("SD_PRIVATE_MEDIA", False)
# Seconds each request has in all to send its headers (generator.web.connections,
# uvicorn --http), and that a request body may stall before a 408; past the first
# SD_BODY_TIMEOUT seconds, a body must also come at SD_BODY_MIN_RATE bytes/s on
# average (Apache's mod_reqtimeout rule; 0: no minimum).
SD_HEADER_TIMEOUT = env_float("SD_HEADER_TIMEOUT", 10.0)
SD_BODY_TIMEOUT = env_float("SD_BODY_TIMEOUT", 30.0)
SD_BODY_MIN_RATE = env_float("SD_BODY_MIN_RATE", 500.0)
SD_MAX_BODY_BYTES = int(env_float("SD_MAX_BODY_MB", 2 * SD_MAX_UPLOAD_MB + 1) * 1024 * 1024)
# Django refuses bigger form bodies before any view reads them.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(2 * SD_MAX_UPLOAD_MB * 1024 * 1024) + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE
# Seconds a stopping worker gives its current job before it hands it back.
SD_WORKER_GRACE = env_float("SD_WORKER_GRACE", 30.0)
# A job denoising longer than this (seconds) is stopped and failed; a step that
# will not end at all makes the worker restart itself SD_WATCHDOG_GRACE later.
SD_JOB_TIMEOUT = env_float("SD_JOB_TIMEOUT", 3600.0)
# A worker that failed to load a model tries it again after this many seconds
# (meanwhile it leaves that model's jobs to workers that can load it).
SD_LOAD_RETRY = env_float("SD_LOAD_RETRY", 300.0)
SD_WATCHDOG_GRACE = env_float("SD_WATCHDOG_GRACE", 120.0)
# The most pixels (width x height) a job may ask for: where one step takes
# about a minute at most on a CPU (SD 1.x at 1024x1024), four times more on a GPU.
SD_MAX_PIXELS = int(
    os.environ.get("SD_MAX_PIXELS")
    or (1024 * 1024 if os.environ.get("SD_DEVICE", "cpu") in ("cpu", "") else 2048 * 2048)
)
# Upscaler models run on tiles of this many pixels a side (with 8 pixels of overlap), so
# an upscale's memory stays bounded whatever the image's size (A1111's ESRGAN tile).
SD_UPSCALE_TILE = int(os.environ.get("SD_UPSCALE_TILE", "192"))
SD_OPENVINO_PRECISION = os.environ.get("SD_OPENVINO_PRECISION", "fp32")
SD_OPENVINO_COMPILED_SIZES = int(os.environ.get("SD_OPENVINO_COMPILED_SIZES", "3"))
# torch.compile for the PyTorch backend's UNet and VAE decoder: off, default,
# reduce-overhead (CUDA graphs on a GPU) or max-autotune. Each image size and batch is
# compiled once per worker ("compiling" in progress), from SD_COMPILE_CACHE_DIR's
# on-disk cache after a restart. Off by default: not yet measured to pay (docs/performance.md).
TORCH_COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
SD_TORCH_COMPILE = os.environ.get("SD_TORCH_COMPILE", "off").strip().lower() or "off"
if SD_TORCH_COMPILE not in TORCH_COMPILE_MODES:
    raise ImproperlyConfigured(
        f"SD_TORCH_COMPILE={SD_TORCH_COMPILE!r}: use one of {', '.join(TORCH_COMPILE_MODES)}."
    )
SD_COMPILE_CACHE_DIR = Path(
    os.environ.get("SD_COMPILE_CACHE_DIR") or DATA_DIR / "torch-compile"
).resolve()
# The UNet and VAE in channels_last memory format: on by default on a CPU, where it was
# measured to take 0.92x the time a step (bench.torch_cpu); off elsewhere until measured.
SD_CHANNELS_LAST = env_bool("SD_CHANNELS_LAST", os.environ.get("SD_DEVICE", "cpu") in ("cpu", ""))
# How often a progress stream reads the database, and how often it sends a
# keepalive comment while nothing changes.
SD_PROGRESS_INTERVAL = env_float("SD_PROGRESS_INTERVAL", 0.1)
# Progress streams one web process keeps open, and one owner may hold; past
# either, 503 with Retry-After (the page follows by polling). Unset, SD_MAX_STREAMS
# is half of what the process's file limit admits (at most 2000); set, it is never
# more than three quarters of it (generator.web.capacity, docs/deploy.md).
SD_MAX_STREAMS = int(os.environ["SD_MAX_STREAMS"]) if os.environ.get("SD_MAX_STREAMS") else None
SD_MAX_STREAMS_PER_OWNER = int(os.environ.get("SD_MAX_STREAMS_PER_OWNER", "20"))
SD_KEEPALIVE_SECONDS = env_float("SD_KEEPALIVE_SECONDS", 15.0)
# Live previews: the worker turns the latents into a small JPEG at most every
# SD_PREVIEW_INTERVAL seconds (no VAE decode). SD_PREVIEWS=0 turns them off.
SD_PREVIEWS = env_bool("SD_PREVIEWS", True)
SD_PREVIEW_INTERVAL = env_float("SD_PREVIEW_INTERVAL", 0.5)
# How a preview reaches a progress stream: `inline` (the JPEG in the message, as a data:
# URL) or `url` (its /media/ URL, which the page fetches). Measured in docs/previews.md.
SD_PREVIEW_DELIVERY = os.environ.get("SD_PREVIEW_DELIVERY", "inline")
if SD_PREVIEW_DELIVERY not in ("inline", "url"):
    raise ImproperlyConfigured("SD_PREVIEW_DELIVERY must be inline or url.")
# The fewest seconds between two writes of a job's step times (the admin's chart): the
# steps in between are written without them; the last step always carries them all.
SD_STEP_TIMES_WRITE_INTERVAL = env_float("SD_STEP_TIMES_WRITE_INTERVAL", 0.0)
# The fewest seconds between two progress writes of a job: faster steps are written
# as the newest one at that pace (the last step and every phase change always are).
SD_STEP_WRITE_INTERVAL = env_float("SD_STEP_WRITE_INTERVAL", 0.05)
SD_HISTORY_PAGE_SIZE = int(os.environ.get("SD_HISTORY_PAGE_SIZE", "24"))

# --- Operations (docs/operations.md) --------------------------------------------


def env_list(name: str, default: str = "") -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


def env_networks(name: str, default: str = "") -> list[str]:
    """Comma-separated IP addresses and networks; a wrong one stops the start, named."""
    entries = env_list(name, default)
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {entry!r} is not an IP address or network (e.g. 10.0.0.0/8)"
            ) from None
    return entries


# The proxies (nginx: docs/deploy.md) whose X-Forwarded-For names the client, as
# addresses or networks; empty (the default): none, the connection's peer is the
# client. The one address every limit and private route uses (generator.addresses).
SD_TRUSTED_PROXIES = env_networks("SD_TRUSTED_PROXIES")
# With SD_API_AUTH=off, the API routes are open without a key only to clients in
# these networks (the client address above, past trusted proxies); others still
# need one. Empty (the default): SD_API_AUTH=off opens them to every client.
SD_API_ANONYMOUS_FROM = env_networks("SD_API_ANONYMOUS_FROM")
# GET /metrics and /api/stats/progress answer only clients in these networks (403
# elsewhere; staff may also read the stats).
SD_METRICS_ALLOWED = env_networks("SD_METRICS_ALLOWED", "127.0.0.0/8,::1/128")
# Retention: `manage.py prune` (and the worker, hourly) deletes ended sessions
# older than this many days; unset keeps them for ever.
SD_KEEP_DAYS = env_float("SD_KEEP_DAYS", 0.0) or None
# New jobs are refused (507) while media/ holds more than this; unset: no quota.
SD_MEDIA_QUOTA_GB = env_float("SD_MEDIA_QUOTA_GB", 0.0) or None
# Free space a disk must keep for new work (generator.disk): under it, POSTs answer 507,
# /readyz is not ready and workers take no job: the SQLite database's disk, the media's.
SD_DB_MIN_FREE_MB = env_float("SD_DB_MIN_FREE_MB", 20.0)
SD_MEDIA_MIN_FREE_MB = env_float("SD_MEDIA_MIN_FREE_MB", 100.0)
# Webhooks (callback_url): the hosts they may go to (names, *.wildcards or IP
# networks; empty: webhooks off), the HMAC secret that signs them, and how many
# attempts each gets.
SD_WEBHOOK_HOSTS = env_list("SD_WEBHOOK_HOSTS")
SD_WEBHOOK_SECRET = os.environ.get("SD_WEBHOOK_SECRET", "")
SD_WEBHOOK_ATTEMPTS = int(os.environ.get("SD_WEBHOOK_ATTEMPTS", "5"))
# The address users reach this site at: webhooks carry absolute image URLs.
SD_PUBLIC_URL = os.environ.get(
    "SD_PUBLIC_URL", f"http://127.0.0.1:{os.environ.get('SDSITE_PORT', '8000')}"
).rstrip("/")
# Logs: "text" (default) or "json" (one object per line, for log shippers).
SD_LOG_FORMAT = os.environ.get("SD_LOG_FORMAT", "text").strip().lower()
if SD_LOG_FORMAT == "json":
    LOGGING["formatters"]["plain"] = {"()": "generator.logs.JsonFormatter"}
LOGGING["handlers"]["console"]["filters"] = ["context"]
LOGGING["filters"] = {"context": {"()": "generator.logs.ContextFilter"}}
