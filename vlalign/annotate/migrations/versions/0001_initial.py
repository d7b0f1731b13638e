"""The first schema of the labelling database (see vlalign/annotate/schema.py for what each table holds).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = 200  # item ids


def upgrade() -> None:
    op.create_table(
        "project",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_project"),
    )
    op.create_table(
        "images",
        sa.Column("sha256", sa.String(64)),
        sa.Column("mime", sa.String(32), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_images"),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.String(ID)),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("record_id", sa.String(ID), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("first", sa.Text, nullable=False),
        sa.Column("second", sa.Text, nullable=False),
        sa.Column("source_order", sa.JSON, nullable=False),
        sa.Column("n_source_responses", sa.Integer, nullable=False),
        sa.Column("images", sa.JSON, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("gold", sa.String(8)),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sa.UniqueConstraint("position", name="uq_items_position"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(255)),
        sa.Column("invite_hash", sa.String(64)),
        sa.Column("invite_expires", sa.DateTime),
        sa.Column("labels_disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
        sa.UniqueConstraint("invite_hash", name="uq_users_invite_hash"),
    )
    op.create_table(
        "logins",
        sa.Column("token_hash", sa.String(64)),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_logins"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_logins_user_id_users"),
    )
    op.create_index("ix_logins_user_id", "logins", ["user_id"])
    op.create_table(
        "assignments",
        sa.Column("item_id", sa.String(ID)),
        sa.Column("user_id", sa.Integer),
        sa.Column("served_at", sa.DateTime, nullable=False),
        sa.Column("outcome", sa.String(8)),
        sa.Column("judgement_id", sa.String(32)),
        sa.Column("submitted_at", sa.DateTime),
        sa.PrimaryKeyConstraint("item_id", "user_id", name="pk_assignments"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_assignments_item_id_items"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_assignments_user_id_users"),
    )
    op.create_index("ix_assignments_user_id", "assignments", ["user_id"])
    op.create_table(
        "judgements",
        sa.Column("seq", sa.Integer, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("item_id", sa.String(ID), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("shown_left", sa.String(8), nullable=False),
        sa.Column("corrections", sa.JSON, nullable=False),
        sa.Column("ratings", sa.JSON, nullable=False),
        sa.Column("unsafe", sa.JSON, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float),
        sa.Column("served_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("client_key", sa.String(64)),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_judgements"),
        sa.UniqueConstraint("id", name="uq_judgements_id"),
        sa.UniqueConstraint("user_id", "client_key", name="uq_judgements_user_client_key"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_judgements_item_id_items"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_judgements_user_id_users"),
    )
    op.create_index("ix_judgements_item_id", "judgements", ["item_id"])
    op.create_index("ix_judgements_user_id", "judgements", ["user_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("user_id", sa.Integer),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(ID), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_events_user_id_users"),
    )
    op.create_table(
        "scores",
        sa.Column("item_id", sa.String(ID)),
        sa.Column("r_first", sa.Float, nullable=False),
        sa.Column("r_second", sa.Float, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("item_id", name="pk_scores"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_scores_item_id_items"),
    )
    op.create_table(
        "model_runs",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("n_labels", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_runs"),
    )


def downgrade() -> None:
    for name in ("model_runs", "scores", "events", "judgements", "assignments", "logins", "users", "items",
                 "images", "project"):
        op.drop_table(name)
