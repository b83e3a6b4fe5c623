from django.contrib import admin, messages
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from .metadata import a1111_parameters
from .models import GenerationSession, WorkerRecord
from .queue import CancelOutcome, request_cancel, requeue
from .step_chart import step_chart_svg


@admin.register(GenerationSession)
class GenerationSessionAdmin(admin.ModelAdmin):
    list_display = (
        "thumbnail",
        "short_prompt",
        "status",
        "progress",
        "backend",
        "model",
        "owner_label",
        "created_at",
        "duration",
    )
    list_display_links = ("thumbnail", "short_prompt")
    list_filter = ("status", "backend", "model", "created_at")
    list_select_related = ("owner",)
    search_fields = ("prompt", "negative_prompt", "model", "worker_id")
    date_hierarchy = "created_at"
    actions = ("cancel_sessions", "requeue_sessions")
    readonly_fields = ("image_preview", "a1111_parameters", "step_chart", "owner_label")
    fieldsets = (
        (None, {"fields": ("id", "prompt", "negative_prompt", "image_preview", "owner_label")}),
        (
            "Parameters",
            {
                "fields": (
                    "steps",
                    "guidance_scale",
                    "width",
                    "height",
                    "seed",
                    "scheduler",
                    "a1111_parameters",
                )
            },
        ),
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
                    "cancel_requested",
                    "step_recorded_at",
                    "eta_seconds",
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

    @admin.action(description="Cancel the selected generations", permissions=["manage"])
    def cancel_sessions(self, request, queryset):
        outcomes = [request_cancel(pk) for pk in queryset.values_list("pk", flat=True)]
        stopped = sum(o in (CancelOutcome.CANCELLED, CancelOutcome.CANCELLING) for o in outcomes)
        self.message_user(
            request,
            f"Cancelled {stopped} generation(s); {len(outcomes) - stopped} had already ended.",
            messages.SUCCESS if stopped else messages.WARNING,
        )

    @admin.action(description="Re-queue the selected failed or cancelled", permissions=["manage"])
    def requeue_sessions(self, request, queryset):
        selected = queryset.count()
        count = requeue(queryset.values_list("pk", flat=True))
        self.message_user(
            request,
            f"Re-queued {count} generation(s); {selected - count} were not failed or cancelled.",
            messages.SUCCESS if count else messages.WARNING,
        )

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
        return obj.prompt if len(obj.prompt) <= 60 else obj.prompt[:59] + "…"

    @admin.display(description="owner", ordering="owner")
    def owner_label(self, obj):
        if obj.owner:
            return str(obj.owner)
        return "anonymous browser" if obj.owner_key else "none (CLI or script)"

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

    @admin.display(description="image")
    def image_preview(self, obj):
        if not obj.image:
            return "—"
        return format_html(
            '<a href="{0}"><img src="{0}" alt="generated image" style="max-width:512px"></a>',
            obj.image.url,
        )


@admin.register(WorkerRecord)
class WorkerRecordAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "host",
        "pid",
        "served_models",
        "served_backends",
        "started_at",
        "last_seen_at",
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
