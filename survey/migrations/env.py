"""Alembic environment of the survey schema, driven from code (survey.db.migrate).

To write a new migration after changing survey/models.py:

    .venv/bin/python -c "from survey.db import make_engine, alembic_config; from alembic import command; \
        command.revision(alembic_config(make_engine('sqlite:///scratch.db')), 'message', autogenerate=True)"

(run it against a database at the previous head), then review the generated file.
"""

from alembic import context
from sqlalchemy import engine_from_config, pool

from survey.models import Base

config = context.config
target_metadata = Base.metadata
version_table = config.attributes.get("version_table", "survey_alembic_version")


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, version_table=version_table, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, version_table=version_table,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
