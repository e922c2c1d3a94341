"""Crowdsourcing study links: one public link per study, participants identified by a
platform id from the URL (Prolific's PROLIFIC_PID by default).

- new table ``study_links`` (secret, id parameter, kept parameters, quota, completion and
  screen-out codes and http(s) URLs, open / closed);
- ``raters`` gain ``link_id``, ``participant_id`` and ``platform_ids``; the database
  allows one rater per (study, participant id), a participant id only together with a
  link, and only a link of the rater's own study.

Existing raters (personal invitations) keep NULL in the new columns. On SQLite the
``raters`` table is rebuilt (batch mode) with foreign keys off for the rebuild only
(``survey.db.migrate``), so no vote cascades away.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

HTTP_URL = "({column} IS NULL OR {column} LIKE 'http://%' OR {column} LIKE 'https://%')"


def upgrade() -> None:
    op.create_table('study_links',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('secret', sa.String(length=64), nullable=False),
    sa.Column('id_param', sa.String(length=64), nullable=False),
    sa.Column('keep_params', sa.Text(), nullable=False),
    sa.Column('quota', sa.Integer(), nullable=True),
    sa.Column('completion_code', sa.String(length=64), nullable=False),
    sa.Column('completion_url', sa.Text(), nullable=True),
    sa.Column('screenout_code', sa.String(length=64), nullable=True),
    sa.Column('screenout_url', sa.Text(), nullable=True),
    sa.Column('is_open', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('quota IS NULL OR quota >= 1', name=op.f('ck_study_links_quota_positive')),
    sa.CheckConstraint(HTTP_URL.format(column='completion_url'), name=op.f('ck_study_links_completion_url_http')),
    sa.CheckConstraint(HTTP_URL.format(column='screenout_url'), name=op.f('ck_study_links_screenout_url_http')),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_study_links_study_id_studies'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_study_links')),
    sa.UniqueConstraint('id', 'study_id', name=op.f('uq_study_links_id_study_id')),
    sa.UniqueConstraint('secret', name=op.f('uq_study_links_secret')),
    sa.UniqueConstraint('study_id', name=op.f('uq_study_links_study_id'))
    )
    with op.batch_alter_table('raters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('link_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('participant_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('platform_ids', sa.Text(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_raters_study_id_participant_id'),
                                          ['study_id', 'participant_id'])
        batch_op.create_check_constraint(batch_op.f('ck_raters_participant_via_link'),
                                         '(link_id IS NULL) = (participant_id IS NULL)')
        batch_op.create_foreign_key('fk_raters_link_of_study', 'study_links', ['link_id', 'study_id'],
                                    ['id', 'study_id'])


def downgrade() -> None:
    with op.batch_alter_table('raters', schema=None) as batch_op:
        batch_op.drop_constraint('fk_raters_link_of_study', type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('ck_raters_participant_via_link'), type_='check')
        batch_op.drop_constraint(batch_op.f('uq_raters_study_id_participant_id'), type_='unique')
        batch_op.drop_column('platform_ids')
        batch_op.drop_column('participant_id')
        batch_op.drop_column('link_id')
    op.drop_table('study_links')
