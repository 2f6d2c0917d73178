"""train / eval sub-commands."""


def register(sub, parser_class, add_config_args) -> None:
    return None
