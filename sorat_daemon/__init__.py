"""sorat: a local agent daemon that speaks OpenAI's Chat Completions API."""

__version__ = "0.1.0"
