from setuptools import setup

setup(
    name="pyhook",
    version="1.0.0",
    description="Validation of OAuth/OIDC JWT logins for the pg_oauth PostgreSQL extension",
    packages=["pyhook"],
    python_requires=">=3.9",
    install_requires=["PyJWT>=2.8,<3", "cryptography>=41", "google-re2>=1.1"],
    # pg-oauth explain/check/doctor --dsn
    extras_require={"dsn": ["psycopg>=3.1"]},
    # its subcommands of pg-oauth, the client's command (pg_oauth_command), which make install
    # puts beside pyhook on a server
    entry_points={
        "pg_oauth.commands": [
            "explain = pyhook.cli:explain",
            "check = pyhook.cli:check",
            "doctor = pyhook.cli:doctor",
            "uninstall = pyhook.cli:uninstall",
        ]
    },
)
