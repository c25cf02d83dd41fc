"""Example answers for the OpenAPI document, one per route, taken from real responses (trimmed).

Kept apart from the routes so handlers stay short; `api.openapi` attaches them, and a test checks
that every route in the document has one."""

from __future__ import annotations

from typing import Any

from campaigns.models import MessageStatus

CAMPAIGN_ID = "cmp_9ae89f1d371bc714"
KEY_ID = "key_e8fb692109e5c47d"
ORG_ID = "org_5efcc3b1e7226570"
NOW = "2026-03-20T01:30:00Z"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _counts(**values: int) -> dict[str, int]:
    counts = {status.value: values.get(status.value, 0) for status in MessageStatus}
    return {"total": sum(counts.values()), **counts}


CAMPAIGN: dict[str, Any] = {
    "id": CAMPAIGN_ID,
    "name": "Census 2026 wave 1",
    "channel": "sms",
    "status": "running",
    "sender": "TCTK",
    "template": {"body": "Kính gửi {{ ten }}: Tổng điều tra dân số bắt đầu 1/4."},
    "encoding": "auto",
    "secret_fields": [],
    "fields": ["ten", "tinh"],
    "schedule": {
        "start_at": None,
        "window": {"start": "07:00", "end": "22:00", "tz": "Asia/Ho_Chi_Minh"},
        "deadline": "2026-03-27T15:00:00Z",
    },
    "rate_limit": 200.0,
    "priority": "normal",
    "options": {"ambiguous": "resend", "list_unsubscribe": None, "verp": False},
    "test_of": None,
    "waiting_for_window": False,
    "failure_reason": None,
    "approved_by": "key_51d0a3c2b9e84f17",
    "approved_at": "2026-03-20T01:20:00Z",
    "created_at": "2026-03-19T09:00:00Z",
    "updated_at": NOW,
    "launched_at": NOW,
    "finished_at": None,
    "counts": _counts(queued=1200, dispatching=200, sent=350, delivered=8200, undeliverable=40, suppressed=10),
    "by_gateway": {
        "viettel": _counts(sent=200, delivered=5100, undeliverable=25),
        "vinaphone": _counts(sent=150, delivered=3100, undeliverable=15),
    },
    "stats": {
        "segments": 10000,
        "ambiguous_resends": 2,
        "no_receipt": 0,
        "by_carrier": {"Viettel": _counts(sent=200, delivered=5100, undeliverable=25)},
        "by_error": {"0x0000000B": 40},
    },
}

MESSAGE: dict[str, Any] = {
    "id": "1042",
    "campaign_id": CAMPAIGN_ID,
    "upload": "upl_fb7c7cb3b41d8081",
    "row": 2,
    "to": "+84912345678",
    "status": "delivered",
    "gateway": "vinaphone",
    "carrier": "Vinaphone",
    "segments": 1,
    "attempts": 1,
    "ambiguous_resends": 0,
    "provider_message_id": "5F3A0C21",
    "error": None,
    "no_receipt": False,
    "fields": {"ten": "Nguyễn Văn An", "tinh": "Hà Nội"},
    "has_secrets": False,
    "created_at": "2026-03-19T09:05:00Z",
    "submitted_at": "2026-03-20T01:30:02Z",
    "delivered_at": "2026-03-20T01:30:09Z",
    "updated_at": "2026-03-20T01:30:09Z",
}

KEY: dict[str, Any] = {
    "id": KEY_ID,
    "name": "telecom department",
    "role": "sender",
    "prefix": "loa_Bxgf",
    "org_id": ORG_ID,
    "created_at": NOW,
    "revoked_at": None,
    "last_used_at": None,
}

ORG: dict[str, Any] = {
    "id": ORG_ID,
    "name": "gso",
    "approval_threshold": 10000,
    "daily_quota": 2000000,
    "frequency_cap": 3,
}

PREVIEW: dict[str, Any] = {
    "encoding": "ucs2",
    "policy": "auto",
    "samples": [
        {
            "to": "+84912345678",
            "text": "Kính gửi Nguyễn Văn An: Tổng điều tra dân số bắt đầu 1/4.",
            "encoding": "ucs2",
            "segments": 1,
        }
    ],
    "totals": {"messages": 10000, "segments": 10000, "errors": 0, "estimated": False},
}

UPLOAD: dict[str, Any] = {
    "upload": "upl_fb7c7cb3b41d8081",
    "total_rows": 10012,
    "accepted": 10000,
    "rejected": 1,
    "duplicates": 1,
    "suppressed": 10,
    "errors": [{"row": 37, "column": "phone", "reason": "not a Vietnamese mobile or landline number"}],
    "errors_truncated": False,
}

TEST_SEND: dict[str, Any] = {
    "test_campaign": "cmp_82be15541c29379d",
    "test_of": CAMPAIGN_ID,
    "status": "running",
    "accepted": 1,
    "suppressed": 0,
    "duplicates": 0,
    "samples": PREVIEW["samples"],
}

AUDIT: dict[str, Any] = {
    "items": [
        {
            "id": 5,
            "at": NOW,
            "key_id": KEY_ID,
            "action": "campaign.launch",
            "target": CAMPAIGN_ID,
            "detail": {"recipients": 10000, "status": "running", "approved_by": "key_51d0a3c2b9e84f17"},
        }
    ],
    "next_cursor": "NQ",
}

GATEWAYS: dict[str, Any] = {
    "items": [
        {
            "name": "viettel",
            "type": "smpp",
            "host": "10.0.0.5",
            "port": 2775,
            "binds": 2,
            "bound": 2,
            "tps": 200.0,
            "rate_factor": 1.0,
            "queue_depth": 800,
            "carriers": ["Viettel"],
            "default": False,
            "fallback": "vinaphone",
        },
        {
            "name": "gso-relay",
            "type": "smtp",
            "host": "10.0.0.9",
            "port": 587,
            "connections": 4,
            "rate": 200.0,
            "queue_depth": 0,
            "dkim": "gso.gov.vn",
        },
    ]
}

REPORT_CSV = (
    "upload,row,to,status,gateway,carrier,segments,provider_message_id,error,submitted_at,delivered_at,ten,tinh\r\n"
    "upl_fb7c7cb3b41d8081,2,+84912345678,delivered,vinaphone,Vinaphone,1,5F3A0C21,,"
    "2026-03-20T01:30:02Z,2026-03-20T01:30:09Z,Nguyễn Văn An,Hà Nội\r\n"
)

COUNTS: dict[str, Any] = {
    "id": CAMPAIGN_ID,
    "status": "running",
    "counts": CAMPAIGN["counts"],
    "progress": {"total": 10000, "pending": 1400, "awaiting_receipt": 350, "done": 8250, "percent": 82.5},
    "by_gateway": CAMPAIGN["by_gateway"],
    **CAMPAIGN["stats"],
    "by_field": {"tinh": {"Hà Nội": _counts(delivered=4100), "Huế": _counts(delivered=4100, undeliverable=40)}},
    "per_minute": [{"minute": "2026-03-20T01:30:00Z", "sent": 6000, "delivered": 5800}],
    "fields_counted": ["tinh"],
    "reconciled_at": NOW,
    "drift": 0,
}

EXPORT: dict[str, Any] = {
    "id": "exp_4c1f0e9a7b2d3c85",
    "campaign_id": CAMPAIGN_ID,
    "format": "xlsx",
    "status": "running",
    "progress": {"rows_done": 400000, "rows_total": 1000000, "percent": 40.0},
    "sheets": 1,
    "size": None,
    "error": None,
    "created_at": NOW,
    "finished_at": None,
    "expires_at": "2026-03-21T01:30:00Z",
    "download_url": None,
}

WEBHOOK: dict[str, Any] = {
    "id": "whk_1a2b3c4d5e6f7a8b",
    "url": "https://thongke.example.vn/loa/events",
    "events": ["campaign.progress", "campaign.report"],
    "progress_interval_s": 60,
    "description": "statistics office dashboard",
    "created_at": NOW,
}

# (method, path) → (status, media type, example). Paths as the OpenAPI document writes them.
RESPONSES: dict[tuple[str, str], tuple[str, str, Any]] = {
    ("post", "/v1/campaigns"): ("201", "application/json", {**CAMPAIGN, "status": "draft"}),
    ("get", "/v1/campaigns"): ("200", "application/json", {"items": [CAMPAIGN], "next_cursor": None}),
    ("get", "/v1/campaigns/{campaign_id}"): ("200", "application/json", CAMPAIGN),
    ("patch", "/v1/campaigns/{campaign_id}"): ("200", "application/json", {**CAMPAIGN, "status": "draft"}),
    ("post", "/v1/campaigns/{campaign_id}/clone"): ("201", "application/json", {**CAMPAIGN, "status": "draft"}),
    ("post", "/v1/campaigns/{campaign_id}/approve"): ("200", "application/json", {**CAMPAIGN, "status": "draft"}),
    ("post", "/v1/campaigns/{campaign_id}/launch"): ("200", "application/json", CAMPAIGN),
    ("post", "/v1/campaigns/{campaign_id}/pause"): ("200", "application/json", {**CAMPAIGN, "status": "paused"}),
    ("post", "/v1/campaigns/{campaign_id}/resume"): ("200", "application/json", CAMPAIGN),
    ("post", "/v1/campaigns/{campaign_id}/cancel"): ("200", "application/json", {**CAMPAIGN, "status": "cancelled"}),
    ("get", "/v1/campaigns/{campaign_id}/preview"): ("200", "application/json", PREVIEW),
    ("post", "/v1/campaigns/{campaign_id}/test"): ("202", "application/json", TEST_SEND),
    ("post", "/v1/campaigns/{campaign_id}/recipients"): ("200", "application/json", UPLOAD),
    ("get", "/v1/campaigns/{campaign_id}/messages"): (
        "200",
        "application/json",
        {"items": [MESSAGE], "next_cursor": "MTA0Mg"},
    ),
    ("get", "/v1/campaigns/{campaign_id}/report.csv"): ("200", "text/csv", REPORT_CSV),
    ("get", "/v1/campaigns/{campaign_id}/report.xlsx"): ("200", XLSX, None),
    ("get", "/v1/messages"): ("200", "application/json", {"items": [MESSAGE], "next_cursor": None}),
    ("get", "/v1/messages/{message_id}"): (
        "200",
        "application/json",
        {
            **MESSAGE,
            "events": [
                {"at": "2026-03-20T01:30:02Z", "kind": "submitted", "detail": {"provider_ids": ["5F3A0C21"]}},
                {"at": "2026-03-20T01:30:09Z", "kind": "receipt", "detail": {"stat": "DELIVRD"}},
            ],
        },
    ),
    ("post", "/v1/bounces"): ("200", "application/json", {"matched": True, "message_id": "1042", "kind": "hard"}),
    ("get", "/v1/keys"): ("200", "application/json", {"items": [KEY], "next_cursor": None}),
    ("post", "/v1/keys"): (
        "201",
        "application/json",
        {**KEY, "key": "loa_Bxgfb1clyqDngN6jnnVRPyXk2tER0sqRGMVNjV75NTU"},
    ),
    ("delete", "/v1/keys/{key_id}"): ("200", "application/json", {**KEY, "revoked_at": NOW}),
    ("get", "/v1/org"): ("200", "application/json", ORG),
    ("patch", "/v1/org"): ("200", "application/json", ORG),
    ("get", "/v1/audit"): ("200", "application/json", AUDIT),
    ("get", "/v1/gateways"): ("200", "application/json", GATEWAYS),
    ("get", "/v1/suppressions"): (
        "200",
        "application/json",
        {"items": [{"address": "+84912345678", "reason": "STOP reply", "created_at": NOW}], "next_cursor": None},
    ),
    ("post", "/v1/suppressions"): ("201", "application/json", {"added": 1}),
    ("get", "/v1/mnp"): (
        "200",
        "application/json",
        {"items": [{"number": "+84912345678", "carrier": "Viettel"}], "next_cursor": None},
    ),
    ("post", "/v1/mnp"): ("201", "application/json", {"added": 1}),
    ("get", "/v1/campaigns/{campaign_id}/counts"): ("200", "application/json", COUNTS),
    ("post", "/v1/campaigns/{campaign_id}/counts/reconcile"): ("200", "application/json", {**COUNTS, "corrected": 0}),
    ("post", "/v1/campaigns/{campaign_id}/exports"): ("202", "application/json", EXPORT),
    ("get", "/v1/exports/{export_id}"): (
        "200",
        "application/json",
        {**EXPORT, "status": "done", "download_url": "/v1/exports/exp_4c1f0e9a7b2d3c85/download"},
    ),
    ("get", "/v1/exports/{export_id}/download"): ("200", XLSX, None),
    ("get", "/v1/webhooks"): ("200", "application/json", {"items": [WEBHOOK]}),
    ("post", "/v1/webhooks"): ("201", "application/json", {**WEBHOOK, "secret": "whsec_9f8e7d6c5b4a39281706f5e4"}),
    ("get", "/v1/webhooks/{webhook_id}/deliveries"): (
        "200",
        "application/json",
        {
            "items": [
                {
                    "id": "17",
                    "event": "campaign.progress",
                    "status": "delivered",
                    "attempts": 1,
                    "last_status": 200,
                    "last_error": None,
                    "created_at": NOW,
                    "next_attempt_at": None,
                    "delivered_at": NOW,
                }
            ]
        },
    ),
    ("post", "/v1/webhooks/{webhook_id}/test"): ("202", "application/json", {"queued": True}),
    ("get", "/v1/me"): (
        "200",
        "application/json",
        {
            "key": {"id": KEY_ID, "name": "telecom department", "role": "sender", "prefix": "loa_Bxgf"},
            "org": {"id": ORG_ID, "name": "gso"},
        },
    ),
    ("get", "/healthz"): ("200", "application/json", {"status": "ok", "database": True, "redis": True}),
    ("get", "/metrics"): ("200", "text/plain", 'loa_messages_total{status="delivered"} 8200.0\n'),
}

# Examples for request bodies whose model has none (keyed like RESPONSES, then media type).
REQUEST_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/campaigns/{campaign_id}/recipients"): {
        "multipart/form-data": {"file": "phone,ten,tinh\n0912345678,Nguyễn Văn An,Hà Nội\n"}
    },
    ("post", "/v1/campaigns/{campaign_id}/exports"): {"application/json": {"format": "xlsx"}},
    ("post", "/v1/webhooks"): {
        "application/json": {
            "url": "https://thongke.example.vn/loa/events",
            "events": ["campaign.progress", "campaign.report"],
            "progress_interval_s": 60,
        }
    },
}

# Request bodies that routes read themselves (CSV or JSON), so FastAPI cannot describe them.
REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/suppressions"): {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"address": {"type": "string"}, "reason": {"type": "string"}},
                    "required": ["address"],
                },
                "example": {"address": "0912345678", "reason": "asked to stop"},
            },
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}},
                "example": {"file": "address,reason\n0912345678,STOP\n"},
            },
        }
    },
    ("post", "/v1/mnp"): {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"number": {"type": "string"}, "carrier": {"type": "string"}},
                    "required": ["number", "carrier"],
                },
                "example": {"number": "0912345678", "carrier": "Viettel"},
            },
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}},
                "example": {"file": "number,carrier\n0912345678,Viettel\n"},
            },
        }
    },
}

ERROR_EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "401": ("Missing, invalid or revoked key", {"code": "unauthorized", "message": "invalid or revoked API key"}),
    "403": (
        "The key's role may not do this",
        {
            "code": "forbidden",
            "message": "this needs the role admin or sender; the key is operator",
            "details": {"role": "operator", "allowed": ["admin", "sender"]},
        },
    ),
    "404": (
        "No such object in the key's organisation",
        {"code": "not_found", "message": f"campaign {CAMPAIGN_ID} not found"},
    ),
    "409": (
        "Not allowed in the current state (the details name it)",
        {
            "code": "invalid_transition",
            "message": "cannot launch a campaign that is running (allowed: cancel, pause)",
            "details": {"status": "running", "action": "launch"},
        },
    ),
    "413": (
        "Upload too large",
        {"code": "payload_too_large", "message": "upload has more than 1000000 rows"},
    ),
    "422": (
        "Invalid input (every field at fault is listed)",
        {
            "code": "validation_error",
            "message": "sender: SMS sender 'TONGCUCTHONGKE' must be alphanumeric of at most 11 characters",
            "details": [{"field": "sender", "reason": "SMS sender 'TONGCUCTHONGKE' must be alphanumeric ..."}],
        },
    ),
}
