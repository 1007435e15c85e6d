"""Configuration: the TOML configs and their defaults, ``--set`` overrides, validation against
the declared constraints of each component (``constraints``) and the limits of user values
(``limits``)."""
