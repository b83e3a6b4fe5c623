"""The database's rows: generation sessions with their progress, workers, API keys; and the
queryset verbs (`.pending()`, `.visible_to(viewer)`, `.alive()`) that hold the rules several
places read. A job's states and their transitions live in `states`."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import (
    Case,
    Exists,
    F,
    FloatField,
    Func,
    IntegerField,
    Max,
    OuterRef,
    Q,
    Subquery,
    When,
)
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .params import IN_JSON, NAMES, check_json, unused
from .params import parameter as P
from .states import (  # noqa: F401 (re-exported: the rows' states are read everywhere)
    FINISHED_STATUSES,
    FRESH_PROGRESS,
    WORKER_LOST,
    WORKER_STOPPED,
    StateQuerySet,
    Status,
)


class Backend(models.TextChoices):
    PYTORCH = "pytorch", "PyTorch"
    OPENVINO = "openvino", "OpenVINO"


COUNT = Func(F("pk"), function="COUNT", output_field=IntegerField())
"""COUNT(*) in a subquery (Count() would add a GROUP BY there)."""


class SessionQuerySet(StateQuerySet):
    """The rules several places read: what is queued, running, whose, and where it stands;
    the state changes (`states.StateQuerySet`)."""

    def of_queue_owner(self, owner_id, owner_key: str, client_ip: str | None):
        """The sessions of one owner, as the fair queue and the per-owner limits count them:
        a user's; else an anonymous browser's, together with everything anonymous from its
        address (fresh cookies do not make a new owner); else, queued by the CLI or a
        script, all ownerless ones together."""
        if owner_id is not None:
            return self.filter(owner_id=owner_id)
        anonymous = Q(owner__isnull=True)
        if not owner_key and not client_ip:
            return self.filter(anonymous, owner_key="", client_ip__isnull=True)
        same = Q(owner_key=owner_key) if owner_key else Q(pk__in=[])
        if client_ip:
            same |= Q(client_ip=client_ip)
        return self.filter(anonymous & same)

    def in_queue_order(self):
        """Pending sessions in the order workers take them (see `next_turn`)."""
        return self.order_by("queue_turn", "created_at")

    def queue_clock(self) -> float:
        """The turn of the newest job a worker has taken (0 before any)."""
        return self.exclude(status=Status.PENDING).aggregate(t=Max("queue_turn"))["t"] or 0.0

    def next_turn(self, owner_id, owner_key: str, client_ip: str | None) -> float:
        """The queue turn of a new session of this owner: the queue is fair between owners.

        Turns are a virtual clock (start-time fair queueing): the clock is the turn
        of the newest job a worker has taken, an owner with nothing queued goes just
        after it, and each further job of an owner goes one turn after that owner's
        last. So owners take turns, whoever queued a thousand jobs first.
        """
        clock = self.queue_clock()
        last = (
            self.unfinished()
            .of_queue_owner(owner_id, owner_key, client_ip)
            .aggregate(t=Max("queue_turn"))["t"]
        )
        return max(clock + 0.5, (last or 0.0) + 1.0)

    def owned_by(self, viewer):
        """The viewer's own generations (none for a stranger); `viewer`: an ownership.Viewer."""
        return self.filter(viewer.own_sessions())

    def visible_to(self, viewer):
        """Its own, and those nobody owns (queued by the CLI or a script)."""
        return self.filter(viewer.visible_sessions())

    def with_batch_size(self):
        """`batch_size`: how many sessions the request that queued each one made."""
        batch = GenerationSession.objects.filter(batch_id=OuterRef("batch_id")).order_by()
        size = batch.annotate(n=COUNT).values("n")[:1]
        return self.annotate(batch_size=Subquery(size, output_field=IntegerField()))

    def with_queue_place(self, cutoff=None):
        """Where each row stands, as subqueries of the same query.

        For a pending row its place and the work ahead (null for other rows); for a
        running row whether its worker is alive (heartbeat since `cutoff`, by default
        `lease_cutoff()`).
        """
        pending = GenerationSession.objects.pending().order_by()
        ahead = pending.filter(
            Q(queue_turn__lt=OuterRef("queue_turn"))
            | Q(queue_turn=OuterRef("queue_turn"), created_at__lt=OuterRef("created_at"))
        )
        running = GenerationSession.objects.running().order_by()

        def if_pending(queryset, aggregate, output_field):
            value = Subquery(
                queryset.annotate(v=aggregate).values("v")[:1], output_field=output_field
            )
            return Case(When(status=Status.PENDING, then=value), default=None)

        def total(expression):
            return Func(expression, function="SUM", output_field=FloatField())

        count = COUNT
        # A job ahead with no estimate of its own counts as long as this one; a
        # running job that has not timed a step yet counts its expected time.
        ahead_seconds = total(Coalesce(F("expected_seconds"), OuterRef("expected_seconds")))
        running_seconds = total(Coalesce(F("eta_seconds"), F("expected_seconds")))
        alive = WorkerRecord.objects.alive(cutoff=cutoff)
        return self.annotate(
            queue_ahead=if_pending(ahead, count, IntegerField()),
            queue_ahead_seconds=if_pending(ahead, ahead_seconds, FloatField()),
            queue_running_seconds=if_pending(running, running_seconds, FloatField()),
            queue_workers=if_pending(alive.order_by(), count, IntegerField()),
            worker_alive=Exists(alive.filter(pk=OuterRef("worker_id"))),
        )


class GenerationSession(models.Model):
    """One image request, from the queue to the finished PNG. The id is the session id."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)

    # Who asked: a logged-in user, or an anonymous browser whose browser session (Django's)
    # holds `owner_key`. Neither (the CLI, scripts): anyone with the id may look.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE
    )
    owner_key = models.CharField(max_length=64, blank=True, db_index=True, editable=False)
    client_ip = models.GenericIPAddressField(
        null=True, blank=True, help_text="The address that queued it (per-owner limits)."
    )

    # What was asked for: each field's default, bounds and help come from the
    # parameter spec (params.py). The columns are the parameters queries, the fair
    # batching and the admin's filters and search read; the others are in `parameters`,
    # read and written as attributes of their own names (see `spec_attribute`).
    prompt = models.TextField(**P("prompt").model_options())
    negative_prompt = models.TextField(blank=True, **P("negative_prompt").model_options())
    width = models.PositiveSmallIntegerField(**P("width").model_options())
    height = models.PositiveSmallIntegerField(**P("height").model_options())
    seed = models.BigIntegerField(**P("seed").model_options())
    backend = models.CharField(
        max_length=16, choices=Backend.choices, **P("backend").model_options()
    )
    model = models.CharField(max_length=500, **P("model").model_options())
    parameters = models.JSONField(
        default=dict,
        blank=True,
        validators=[check_json],
        help_text="The other parameters of params.py, by name (absent: the spec's default).",
    )
    # Image inputs (re-encoded PNGs of the uploads), deleted with the session.
    init_image = models.ImageField(upload_to="inputs/", blank=True)
    mask_image = models.ImageField(
        upload_to="inputs/", blank=True, help_text="White: repaint; black: keep."
    )
    batch_id = models.UUIDField(
        null=True, blank=True, db_index=True, help_text="Sessions queued by one request."
    )
    queue_turn = models.FloatField(
        default=0.0,
        db_index=True,
        editable=False,
        help_text="Its turn in the fair queue (SessionQuerySet.next_turn); lowest goes first.",
    )

    # Where it stands; written by the worker that holds the claim.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    phase = models.CharField(max_length=100, blank=True)
    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    step_recorded_at = models.FloatField(
        null=True, blank=True, help_text="Unix time at which the worker recorded the last step."
    )
    step_seconds = models.JSONField(
        default=list, blank=True, help_text="How long each denoising step took, in seconds."
    )
    eta_seconds = models.FloatField(
        null=True, blank=True, help_text="The worker's estimate of the time left, when running."
    )
    expected_seconds = models.FloatField(
        null=True,
        blank=True,
        help_text="How long the job should take, from earlier jobs like it (none without history).",
    )
    preview = models.ImageField(upload_to="previews/", blank=True)
    preview_step = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    image = models.ImageField(upload_to="images/%Y/%m/%d/", blank=True)
    error = models.TextField(blank=True)

    # The claim: every write of a running job is conditional on the token, so a
    # worker that lost its claim cannot overwrite the job's new owner.
    worker_id = models.CharField(max_length=200, blank=True)
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    restarts = models.PositiveSmallIntegerField(
        default=0, help_text="Times a worker took it and it went back to the queue."
    )
    restart_reason = models.CharField(
        max_length=200, blank=True, help_text="Why it last went back to the queue."
    )
    cancel_requested = models.BooleanField(default=False)

    # The webhook (webhooks.py): where to post when it ends, and how that went.
    callback_url = models.URLField(max_length=2000, blank=True)
    webhook_attempts = models.PositiveSmallIntegerField(default=0)
    webhook_next_at = models.DateTimeField(null=True, blank=True)
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)
    webhook_error = models.CharField(max_length=500, blank=True)

    objects = SessionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"], name="session_queue_idx")]

    def __str__(self):
        return f"{self.prompt[:60]} ({self.status})"

    def get_absolute_url(self):
        return reverse("generator:session-detail", args=[self.pk])

    def parameter_values(self) -> dict:
        """What was asked for: the API, the PNG metadata and the CLI describe it alike."""
        values = {name: getattr(self, name) for name in NAMES}
        # Image settings mean nothing without an image, mask settings without a mask, the
        # hires fix's with it off, generation settings in an upscale job.
        left_out = unused(
            image=bool(self.init_image),
            mask=bool(self.mask_image),
            hires=values["enable_hr"],
            upscale=values["job"] == "upscale",
        )
        return {name: value for name, value in values.items() if name not in left_out}

    def parameter_items(self) -> list[tuple[str, object]]:
        """(label, value) of each parameter but the prompt, for the history and the page."""
        return [
            (P(name).label, units_summary(value) if P(name).kind == "units" else value)
            for name, value in self.parameter_values().items()
            if name != "prompt" and value not in ("", None)
        ]

    @property
    def control_images(self) -> list[dict]:
        """Each ControlNet unit's stored image (its URL) with what it was for."""
        from django.core.files.storage import default_storage

        return [
            {"image_url": default_storage.url(unit["image"]), "module": unit["module"],
             "model": unit["model"], "weight": unit["weight"]}
            for unit in self.controlnet or ()
            if unit.get("image")
        ]  # fmt: skip

    @property
    def mode(self) -> str:
        """`txt2img`, `img2img`, `inpaint` or `upscale`."""
        if self.job == "upscale":
            return "upscale"
        if self.mask_image:
            return "inpaint"
        return "img2img" if self.init_image else "txt2img"

    @property
    def percentage(self) -> int:
        return percentage(self.current_step, self.total_steps)

    @property
    def image_url(self) -> str | None:
        return self.image.url if self.image else None

    @property
    def preview_url(self) -> str | None:
        """The newest live preview, at an address that outlives it.

        Each preview is a file of its own, deleted once the next one is written (every
        SD_PREVIEW_INTERVAL): a page or tool that read the file's URL would often fetch
        it too late. This address serves whichever preview the session has when it is
        fetched; `step` only makes it change with each new preview."""
        if not self.preview:
            return None
        address = reverse("generator:session-preview", args=[self.pk])
        return f"{address}?step={self.preview_step}"

    @property
    def thumbnail_url(self) -> str | None:
        """The image, or for a job that never finished (or is running) its live preview."""
        return self.image.url if self.image else self.preview_url

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def worker_lost(self) -> bool:
        """Running, but its worker's heartbeat is older than the lease.

        Rows read with `.with_queue_place()` know it already; others ask. (A running
        row with no worker id was written by hand.)
        """
        if self.status != Status.RUNNING or not self.worker_id:
            return False
        alive = getattr(self, "worker_alive", None)
        if alive is None:
            alive = WorkerRecord.objects.alive().filter(pk=self.worker_id).exists()
        return not alive

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


def units_summary(units) -> str:
    """ControlNet units in a few words each: `canny, demo-canny at 1`."""
    return "; ".join(f"{u['module']}, {u['model']} at {u['weight']:g}" for u in units)


def lease_cutoff(lease_seconds: float | None = None):
    """The oldest heartbeat of a live worker: now less the lease (SD_WORKER_LEASE)."""
    lease = settings.SD_WORKER_LEASE if lease_seconds is None else lease_seconds
    return timezone.now() - timezone.timedelta(seconds=lease)


class WorkerQuerySet(models.QuerySet):
    def alive(self, lease_seconds: float | None = None, cutoff=None):
        """Workers whose heartbeat is younger than the lease (SD_WORKER_LEASE), or `cutoff`."""
        return self.filter(last_seen_at__gte=cutoff or lease_cutoff(lease_seconds))


def spec_attribute(parameter) -> property:
    """`session.steps` and the like: a parameter kept in the `parameters` JSON, read (its
    default when absent) and written as an attribute, and so as a keyword of the model."""

    def read(session):
        return session.parameters.get(parameter.name, parameter.default)

    def write(session, value):
        session.parameters = {**session.parameters, parameter.name: value}

    read.short_description = parameter.label
    return property(read, write, doc=parameter.help)


for _parameter in IN_JSON:
    setattr(GenerationSession, _parameter.name, spec_attribute(_parameter))


class WorkerRecord(models.Model):
    """A running `runworker` process, kept alive by its heartbeat."""

    id = models.CharField(max_length=200, primary_key=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    served_models = models.TextField(
        blank=True, help_text="Models it serves, one a line; blank: any."
    )
    served_backends = models.CharField(
        max_length=100, blank=True, help_text="Backends it serves, comma-separated; blank: any."
    )
    ready = models.BooleanField(
        default=True, help_text="False while it starts (imports its libraries) before claiming."
    )
    started_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(db_index=True)
    loaded_models = models.TextField(
        blank=True,
        help_text='The pipelines it holds loaded, "backend model" a line: their jobs go to it.',
    )
    cannot_load = models.JSONField(
        default=dict,
        blank=True,
        help_text='Models it failed to load, {"backend model": why}: it is unhealthy for them.',
    )

    objects = WorkerQuerySet.as_manager()

    class Meta:
        verbose_name = _("worker")
        ordering = ["-last_seen_at"]

    def __str__(self):
        return self.id

    def serves(self, model: str, backend: str) -> bool:
        models = [m for m in self.served_models.splitlines() if m]
        backends = [b for b in self.served_backends.split(",") if b]
        return (not models or model in models) and (not backends or backend in backends)

    def is_alive(self, lease_seconds: float | None = None) -> bool:
        return self.last_seen_at >= lease_cutoff(lease_seconds)

    def loaded_keys(self) -> set[str]:
        return {key for key in self.loaded_models.splitlines() if key}

    def can_serve(self, model: str, backend: str) -> bool:
        """It serves the model and has not failed to load it."""
        return self.serves(model, backend) and model_key(backend, model) not in self.cannot_load


def model_key(backend: str, model: str) -> str:
    return f"{backend} {model}"


SHOWN_KEY_CHARACTERS = 12
"""Characters of an API key kept in the clear, to list and revoke it (apikeys.py)."""


class ApiKeyQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True, user__is_active=True)


class ApiKey(models.Model):
    """A user's key; only its digest is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100, blank=True, help_text="What the key is for.")
    prefix = models.CharField(max_length=SHOWN_KEY_CHARACTERS, db_index=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    default_model = models.CharField(
        max_length=500, blank=True, help_text="The key's own default model (A1111's options)."
    )
    default_vae = models.CharField(
        max_length=500, blank=True, help_text="The key's own VAE (A1111's `sd_vae` option)."
    )
    unlimited = models.BooleanField(
        default=False, help_text="Exempt from the per-owner queue and rate limits."
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.prefix}… ({self.user}{', ' + self.name if self.name else ''})"

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])


def percentage(current_step: int, total_steps: int) -> int:
    if total_steps <= 0:
        return 0
    return min(100, current_step * 100 // total_steps)


class ComfyPrompt(models.Model):
    """A workflow posted to ComfyUI's API (`dialects/comfyui.py`): the job it queued (with its
    batch), and what ComfyUI's clients read back: the prompt's id and number, the client that
    listens for it on the WebSocket, and the ids of the workflow's nodes by their role."""

    number = models.BigAutoField(primary_key=True)
    prompt_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(
        GenerationSession,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="The first job it queued; the others share its batch.",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE
    )
    client_id = models.CharField(max_length=200, blank=True, db_index=True)
    nodes = models.JSONField(default=dict, help_text="{role: node id}: sampler, save, ...")
    workflow = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "ComfyUI prompt"

    def __str__(self):
        return f"ComfyUI prompt {self.number}"

    def sessions(self) -> list:
        """Its jobs, in their batch's order."""
        return prompt_sessions([self])[self.pk]


PROMPT_SESSION_FIELDS = (
    "id", "status", "image", "error", "batch_id", "created_at", "started_at", "finished_at",
)  # fmt: skip
"""What ComfyUI's answers read of a prompt's jobs: reading only these halves a /history."""


def prompt_sessions(prompts) -> dict:
    """{prompt number: its jobs in their batch's order} for ComfyPrompts read with their first
    session (`select_related("session")`): one query for all their batches."""
    batches = {prompt.session.batch_id for prompt in prompts if prompt.session.batch_id}
    members: dict = {}
    if batches:
        rows = (
            GenerationSession.objects.filter(batch_id__in=batches)
            .only(*PROMPT_SESSION_FIELDS)
            .order_by("created_at")
        )
        for session in rows:
            members.setdefault(session.batch_id, []).append(session)
    return {
        prompt.pk: members.get(prompt.session.batch_id) or [prompt.session] for prompt in prompts
    }


class SiteRecord(models.Model):
    """A fact one process states for the others, by key: the web's media settings, which
    each worker compares with its own at its start (generator.media_storage)."""

    key = models.CharField(max_length=50, primary_key=True)
    value = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "site record"

    def __str__(self):
        return self.key
