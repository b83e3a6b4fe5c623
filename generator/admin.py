"""The Django admin as the job history: sessions (with their parameters, progress, previews and
A1111 metadata), workers, API keys; requeue, cancel and delete go through `services`."""

from datetime import UTC, datetime

from django.contrib import admin, messages
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.timezone import localtime
from django.utils.translation import ngettext

from .metadata import a1111_parameters
from .models import ApiKey, GenerationSession, Status, WorkerRecord
from .params import IN_JSON, NAMES, Parameter
from .services import CancelOutcome, session_cancel, session_delete, session_requeue
from .web.step_chart import step_chart_svg

SHOWN_ELSEWHERE = ("prompt", "negative_prompt", "model", "backend")
"""Parameters the admin shows in other fieldsets than "Parameters"."""


@admin.register(GenerationSession)
class GenerationSessionAdmin(admin.ModelAdmin):
    # Narrow columns, so the list fits a laptop screen: long prompts, model
    # paths and owners are shortened (the full value is in the title).
    list_display = (
        "thumbnail",
        "short_prompt",
        "status",
        "progress",
        "model_label",
        "owner_label",
        "created",
        "duration",
    )
    list_display_links = ("thumbnail", "short_prompt")
    list_filter = ("status", "backend", "model", "created_at")
    list_select_related = ("owner",)
    search_fields = ("prompt", "negative_prompt", "model", "worker_id")
    date_hierarchy = "created_at"
    actions = ("cancel_sessions", "requeue_sessions")
    readonly_fields = (
        "image_preview",
        "input_images",
        "a1111_parameters",
        "step_chart",
        "owner_label",
        "step_recorded",
        "eta",
    )
    fieldsets = (
        (None, {"fields": ("id", "prompt", "negative_prompt", "image_preview", "owner_label")}),
        (
            "Parameters",
            {"fields": (*(n for n in NAMES if n not in SHOWN_ELSEWHERE), "a1111_parameters")},
        ),
        ("Image inputs", {"fields": ("input_images", "batch_id")}),
        ("Model", {"fields": ("backend", "model")}),
        (
            "Progress",
            {
                "fields": (
                    "status",
                    "phase",
                    "current_step",
                    "total_steps",
                    "step_chart",
                    "expected_seconds",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "error",
                    "image",
                    "preview",
                )
            },
        ),
        (
            "Worker",
            {
                "fields": (
                    "worker_id",
                    "claim_token",
                    "attempts",
                    "restarts",
                    "restart_reason",
                    "cancel_requested",
                    "step_recorded",
                    "eta",
                )
            },
        ),
    )

    # The admin is the job history: rows come from the page, the API or the
    # CLI, and the worker owns their state, so every field is read-only. Staff
    # act through the actions (cancel, re-queue, delete), which keep the
    # queue's rules; deleting a session deletes its files.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_manage_permission(self, request):
        return request.user.has_perm("generator.change_generationsession")

    def delete_model(self, request, obj):
        session_delete(obj)

    def delete_queryset(self, request, queryset):
        # One by one through the service, as a user's delete goes, not one bulk DELETE.
        with transaction.atomic():
            for session in queryset.iterator(chunk_size=500):
                session_delete(session)

    @admin.action(description="Cancel the selected generations", permissions=["manage"])
    def cancel_sessions(self, request, queryset):
        outcomes = [session_cancel(pk) for pk in queryset.values_list("pk", flat=True)]
        stopped = sum(o in (CancelOutcome.CANCELLED, CancelOutcome.CANCELLING) for o in outcomes)
        ended = len(outcomes) - stopped
        text = ngettext("Cancelled %d generation.", "Cancelled %d generations.", stopped) % stopped
        if ended:
            text += " " + ngettext("%d had already ended.", "%d had already ended.", ended) % ended
        self.message_user(request, text, messages.SUCCESS if stopped else messages.WARNING)

    @admin.action(description="Re-queue the selected failed or cancelled", permissions=["manage"])
    def requeue_sessions(self, request, queryset):
        selected = queryset.count()
        count = session_requeue(queryset.values_list("pk", flat=True))
        skipped = selected - count
        text = ngettext("Re-queued %d generation.", "Re-queued %d generations.", count) % count
        if skipped:
            text += (
                " "
                + ngettext(
                    "%d was not failed or cancelled, so it stays as it is.",
                    "%d were not failed or cancelled, so they stay as they are.",
                    skipped,
                )
                % skipped
            )
        self.message_user(request, text, messages.SUCCESS if count else messages.WARNING)

    @admin.display(description="")
    def thumbnail(self, obj):
        url = obj.thumbnail_url
        if not url:
            return "—"
        return format_html(
            '<img src="{}" alt="" width="48" height="48" style="object-fit:cover">', url
        )

    @admin.display(description="prompt", ordering="prompt")
    def short_prompt(self, obj):
        return shortened(obj.prompt, 48)

    @admin.display(description="model", ordering="model")
    def model_label(self, obj):
        return shortened(f"{obj.model} ({obj.backend})", 28, keep_end=True)

    @admin.display(description="owner", ordering="owner")
    def owner_label(self, obj):
        if obj.owner:
            return shortened(str(obj.owner), 20)
        return "anonymous browser" if obj.owner_key else "none (CLI)"

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return date_format(localtime(obj.created_at), "Y-m-d H:i")

    @admin.display(description="step recorded at")
    def step_recorded(self, obj):
        if obj.step_recorded_at is None:
            return "—"
        at = datetime.fromtimestamp(obj.step_recorded_at, tz=UTC)
        return date_format(localtime(at), "Y-m-d H:i:s")

    @admin.display(description="time left (worker's estimate)")
    def eta(self, obj):
        if obj.status != Status.RUNNING or obj.eta_seconds is None:
            return "—"
        return f"{obj.eta_seconds:.1f} s"

    @admin.display(description="progress")
    def progress(self, obj):
        return f"{obj.current_step}/{obj.total_steps} ({obj.percentage} %)"

    @admin.display(description="duration")
    def duration(self, obj):
        seconds = obj.duration_seconds
        return "" if seconds is None else f"{seconds:.1f} s"

    @admin.display(description="PNG metadata (A1111)")
    def a1111_parameters(self, obj):
        return format_html("<pre>{}</pre>", a1111_parameters(obj))

    @admin.display(description="step times")
    def step_chart(self, obj):
        # Built from numbers only, so it is safe to mark as such.
        return mark_safe(step_chart_svg(obj.step_seconds)) if obj.step_seconds else "—"

    @admin.display(description="input image and mask")
    def input_images(self, obj):
        files = [f for f in (obj.init_image, obj.mask_image) if f]
        if not files:
            return "— (text to image)"
        return format_html_join(
            " ",
            '<a href="{0}"><img src="{0}" alt="{1}" style="max-width:256px"></a>',
            ((f.url, f.field.name) for f in files),
        )

    @admin.display(description="image")
    def image_preview(self, obj):
        if not obj.image:
            return "—"
        return format_html(
            '<a href="{0}"><img src="{0}" alt="generated image" style="max-width:512px"></a>',
            obj.image.url,
        )


def choice_label(parameter: Parameter):
    """The admin's field of a choice parameter kept in the `parameters` JSON: its label
    ("Crop and resize"), as Django shows a column with choices, not the stored value."""
    labels = dict(parameter.choices)

    @admin.display(description=parameter.label)
    def shown(self, obj):
        value = getattr(obj, parameter.name)
        return labels.get(value, value)

    return shown


for _parameter in IN_JSON:
    if _parameter.choices:
        setattr(GenerationSessionAdmin, _parameter.name, choice_label(_parameter))


def shortened(text: str, length: int, keep_end: bool = False):
    """`text` cut to `length` characters with an ellipsis, whole in the title."""
    if len(text) <= length:
        return text
    short = "…" + text[-(length - 1) :] if keep_end else text[: length - 1] + "…"
    return format_html('<span title="{}">{}</span>', text, short)


@admin.register(WorkerRecord)
class WorkerRecordAdmin(admin.ModelAdmin):
    list_display = (
        "short_id",
        "serves",
        "state",
        "current_job",
        "started_at",
        "last_seen",
        "alive",
    )
    list_filter = ("host", "served_backends")

    # Rows belong to running workers: they add, refresh and remove them.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(boolean=True, description="alive")
    def alive(self, obj):
        return obj.is_alive()

    @admin.display(description="worker", ordering="id")
    def short_id(self, obj):
        return shortened(obj.id, 32)

    @admin.display(description="serves")
    def serves(self, obj):
        models = ", ".join(obj.served_models.splitlines()) or "any model"
        return shortened(f"{models}; {obj.served_backends or 'any backend'}", 40, keep_end=True)

    @admin.display(description="state")
    def state(self, obj):
        return "ready" if obj.ready else "starting"

    @admin.display(description="current job")
    def current_job(self, obj):
        job = GenerationSession.objects.filter(worker_id=obj.id, status=Status.RUNNING).first()
        if job is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a> {}',
            reverse("admin:generator_generationsession_change", args=[job.pk]),
            shortened(job.prompt, 24),
            f"{job.percentage} %",
        )

    @admin.display(description="last seen", ordering="last_seen_at")
    def last_seen(self, obj):
        return f"{(timezone.now() - obj.last_seen_at).total_seconds():.0f} s ago"


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are made with `manage.py apikey create`, which shows the key once; here: revoke."""

    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("user__username", "name", "prefix")
    readonly_fields = ("user", "prefix", "created_at", "last_used_at", "revoked_at")
    fields = (
        "user", "name", "prefix", "default_model", "default_vae", "created_at", "last_used_at",
        "revoked_at",
    )  # fmt: skip
    actions = ("revoke_keys",)

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke the selected keys")
    def revoke_keys(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, ngettext("Revoked %d key.", "Revoked %d keys.", count) % count)
