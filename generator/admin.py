from django.contrib import admin
from django.utils.html import format_html

from .metadata import a1111_parameters
from .models import GenerationSession, WorkerRecord


@admin.register(GenerationSession)
class GenerationSessionAdmin(admin.ModelAdmin):
    list_display = ("short_prompt", "status", "progress", "backend", "created_at", "duration")
    list_filter = ("status", "backend")
    search_fields = ("prompt",)
    date_hierarchy = "created_at"
    readonly_fields = ("image_preview", "a1111_parameters")
    fieldsets = (
        (None, {"fields": ("id", "prompt", "negative_prompt", "image_preview")}),
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
                    "created_at",
                    "started_at",
                    "finished_at",
                    "error",
                    "image",
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
                )
            },
        ),
    )

    # The admin is the job history: rows come from the page, the API or the
    # CLI, and the worker owns their state, so staff view but do not edit.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="prompt", ordering="prompt")
    def short_prompt(self, obj):
        return obj.prompt if len(obj.prompt) <= 60 else obj.prompt[:59] + "…"

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
