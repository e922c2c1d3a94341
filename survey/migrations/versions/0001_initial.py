"""Initial survey schema: studies, images, pairs, raters, impressions, votes.

Frozen copy of survey/models.py at revision 0001 (times as timezone-aware DateTime
holding UTC, JSON as text). The integrity rules are documented in survey/models.py.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('methods', sa.Text(), nullable=False),
    sa.Column('settings', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_studies')),
    sa.UniqueConstraint('name', name=op.f('uq_studies_name'))
    )
    op.create_table('images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('file_name', sa.String(length=100), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('class_label', sa.Integer(), nullable=True),
    sa.Column('class_name', sa.String(length=200), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('method', sa.String(length=200), nullable=False),
    sa.Column('config', sa.Text(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_images_study_id_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images')),
    sa.UniqueConstraint('file_name', name=op.f('uq_images_file_name'))
    )
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_images_study_id'), ['study_id'], unique=False)

    op.create_table('raters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('invite_token', sa.String(length=64), nullable=False),
    sa.Column('planned_total', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('consented_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_raters_study_id_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_raters')),
    sa.UniqueConstraint('invite_token', name=op.f('uq_raters_invite_token'))
    )
    with op.batch_alter_table('raters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_raters_study_id'), ['study_id'], unique=False)

    op.create_table('pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('class_label', sa.Integer(), nullable=True),
    sa.Column('class_name', sa.String(length=200), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('image_a_id', sa.Integer(), nullable=False),
    sa.Column('image_b_id', sa.Integer(), nullable=False),
    sa.Column('source_pair_id', sa.Integer(), nullable=True),
    sa.Column('gold_image_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("(kind = 'gold') = (gold_image_id IS NOT NULL)", name=op.f('ck_pairs_gold_has_answer')),
    sa.CheckConstraint("(kind = 'repeat') = (source_pair_id IS NOT NULL)", name=op.f('ck_pairs_repeat_has_source')),
    sa.CheckConstraint("kind IN ('main', 'gold', 'repeat')", name=op.f('ck_pairs_kind')),
    sa.CheckConstraint('image_a_id <> image_b_id', name=op.f('ck_pairs_distinct_images')),
    sa.ForeignKeyConstraint(['gold_image_id'], ['images.id'], name=op.f('fk_pairs_gold_image_id_images')),
    sa.ForeignKeyConstraint(['image_a_id'], ['images.id'], name=op.f('fk_pairs_image_a_id_images')),
    sa.ForeignKeyConstraint(['image_b_id'], ['images.id'], name=op.f('fk_pairs_image_b_id_images')),
    sa.ForeignKeyConstraint(['source_pair_id'], ['pairs.id'], name=op.f('fk_pairs_source_pair_id_pairs')),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_pairs_study_id_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pairs')),
    sa.UniqueConstraint('source_pair_id', name=op.f('uq_pairs_source_pair_id'))
    )
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pairs_study_id'), ['study_id'], unique=False)

    op.create_table('impressions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('pair_id', sa.Integer(), nullable=False),
    sa.Column('left_image_id', sa.Integer(), nullable=False),
    sa.Column('right_image_id', sa.Integer(), nullable=False),
    sa.Column('shown_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('left_image_id <> right_image_id', name=op.f('ck_impressions_distinct_sides')),
    sa.ForeignKeyConstraint(['left_image_id'], ['images.id'], name=op.f('fk_impressions_left_image_id_images')),
    sa.ForeignKeyConstraint(['pair_id'], ['pairs.id'], name=op.f('fk_impressions_pair_id_pairs')),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_impressions_rater_id_raters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['right_image_id'], ['images.id'], name=op.f('fk_impressions_right_image_id_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_impressions')),
    sa.UniqueConstraint('id', 'rater_id', 'pair_id', name=op.f('uq_impressions_id_rater_id_pair_id')),
    sa.UniqueConstraint('rater_id', 'pair_id', name=op.f('uq_impressions_rater_id_pair_id')),
    sa.UniqueConstraint('token', name=op.f('uq_impressions_token'))
    )
    with op.batch_alter_table('impressions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_impressions_pair_id'), ['pair_id'], unique=False)

    op.create_table('votes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('impression_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('pair_id', sa.Integer(), nullable=False),
    sa.Column('answer', sa.String(length=1), nullable=False),
    sa.Column('answered_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('latency_ms', sa.Integer(), nullable=False),
    sa.CheckConstraint("answer IN ('L', 'R', 'S')", name=op.f('ck_votes_answer')),
    sa.CheckConstraint('latency_ms >= 0', name=op.f('ck_votes_latency')),
    sa.ForeignKeyConstraint(['impression_id', 'rater_id', 'pair_id'], ['impressions.id', 'impressions.rater_id', 'impressions.pair_id'], name='fk_votes_impression_triple', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_votes')),
    sa.UniqueConstraint('impression_id', name=op.f('uq_votes_impression_id')),
    sa.UniqueConstraint('rater_id', 'pair_id', name=op.f('uq_votes_rater_id_pair_id'))
    )
    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.create_index('ix_votes_pair_id', ['pair_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.drop_index('ix_votes_pair_id')

    op.drop_table('votes')
    with op.batch_alter_table('impressions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_impressions_pair_id'))

    op.drop_table('impressions')
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pairs_study_id'))

    op.drop_table('pairs')
    with op.batch_alter_table('raters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_raters_study_id'))

    op.drop_table('raters')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_images_study_id'))

    op.drop_table('images')
    op.drop_table('studies')
