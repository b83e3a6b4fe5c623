"""The site's own routes: the page, history, the JSON API, the progress stream, health, metrics."""

from django.urls import path

from . import metrics, ops, views

app_name = "generator"

urlpatterns = [
    path("", views.index, name="index"),
    path("s/<uuid:session_id>", views.session_detail, name="session-detail"),
    path("s/<uuid:session_id>/delete", views.history_delete, name="session-delete"),
    path("s/<uuid:session_id>/preview.jpg", views.session_preview, name="session-preview"),
    path("history", views.history, name="history"),
    path("api/generate", views.api_generate, name="generate"),
    path("api/queue", views.api_queue, name="queue"),
    path("api/sessions", views.api_sessions, name="sessions"),
    path("api/png-info", views.api_png_info, name="png-info"),
    path("api/loras", views.api_loras, name="loras"),
    path("api/controlnet/detect", views.api_controlnet_detect, name="controlnet-detect"),
    path("api/sessions/<uuid:session_id>", views.api_session, name="session"),
    path("api/sessions/<uuid:session_id>/cancel", views.api_cancel, name="session-cancel"),
    path("api/progress/<uuid:session_id>", views.api_progress, name="session-progress"),
    path("api/stats/progress", views.api_progress_stats, name="progress-stats"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("ops", ops.ops_page, name="ops"),
    path("ops/stream", ops.ops_stream, name="ops-stream"),
    path("favicon.ico", views.favicon, name="favicon"),
]
