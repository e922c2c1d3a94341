"""Integrity of pairs and showings, enforced by the database.

- both images of a pair belong to the pair's study and carry its class name and seed
  (composite foreign keys pairs -> images; a NULL seed is not compared);
- a showing (impression) puts exactly the pair's two images on its two sides: new
  columns ``pair_image_a_id`` / ``pair_image_b_id`` reference ``pairs(id, image_a_id,
  image_b_id)`` together with ``pair_id``, and a CHECK requires (left, right) to be
  (a, b) or (b, a).

Existing rows are back-filled from ``pairs``; a database holding a showing or a pair
that breaks these rules is refused (the whole migration rolls back, nothing changes).
On SQLite the tables are rebuilt (batch mode) with foreign keys switched off for the
rebuild only (``survey.db.migrate``), so dropping the old tables cannot cascade to votes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

SIDES = ("(left_image_id = pair_image_a_id AND right_image_id = pair_image_b_id) OR "
         "(left_image_id = pair_image_b_id AND right_image_id = pair_image_a_id)")


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f('uq_images_id_study_id_class_name'),
                                          ['id', 'study_id', 'class_name'])
        batch_op.create_unique_constraint(batch_op.f('uq_images_id_seed'), ['id', 'seed'])

    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f('uq_pairs_id_image_a_id_image_b_id'),
                                          ['id', 'image_a_id', 'image_b_id'])
        batch_op.create_foreign_key('fk_pairs_image_a_of_pair', 'images', ['image_a_id', 'study_id', 'class_name'],
                                    ['id', 'study_id', 'class_name'])
        batch_op.create_foreign_key('fk_pairs_image_b_of_pair', 'images', ['image_b_id', 'study_id', 'class_name'],
                                    ['id', 'study_id', 'class_name'])
        batch_op.create_foreign_key('fk_pairs_image_a_seed', 'images', ['image_a_id', 'seed'], ['id', 'seed'])
        batch_op.create_foreign_key('fk_pairs_image_b_seed', 'images', ['image_b_id', 'seed'], ['id', 'seed'])

    with op.batch_alter_table('impressions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pair_image_a_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('pair_image_b_id', sa.Integer(), nullable=True))
    op.execute("UPDATE impressions SET "
               "pair_image_a_id = (SELECT pairs.image_a_id FROM pairs WHERE pairs.id = impressions.pair_id), "
               "pair_image_b_id = (SELECT pairs.image_b_id FROM pairs WHERE pairs.id = impressions.pair_id)")
    with op.batch_alter_table('impressions', schema=None) as batch_op:
        batch_op.alter_column('pair_image_a_id', existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column('pair_image_b_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key('fk_impressions_pair_images', 'pairs',
                                    ['pair_id', 'pair_image_a_id', 'pair_image_b_id'],
                                    ['id', 'image_a_id', 'image_b_id'])
        batch_op.create_check_constraint(batch_op.f('ck_impressions_sides_of_pair'), SIDES)


def downgrade() -> None:
    with op.batch_alter_table('impressions', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_impressions_sides_of_pair'), type_='check')
        batch_op.drop_constraint('fk_impressions_pair_images', type_='foreignkey')
        batch_op.drop_column('pair_image_b_id')
        batch_op.drop_column('pair_image_a_id')

    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_constraint('fk_pairs_image_b_seed', type_='foreignkey')
        batch_op.drop_constraint('fk_pairs_image_a_seed', type_='foreignkey')
        batch_op.drop_constraint('fk_pairs_image_b_of_pair', type_='foreignkey')
        batch_op.drop_constraint('fk_pairs_image_a_of_pair', type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('uq_pairs_id_image_a_id_image_b_id'), type_='unique')

    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_images_id_seed'), type_='unique')
        batch_op.drop_constraint(batch_op.f('uq_images_id_study_id_class_name'), type_='unique')
