"""Configuration and the shared words: the params sections (params), typed overrides, Step
notation (steps), the user's own code by import path (imports, user) and schema (tag keys, roles,
metric names, verdict rules), each defined once."""
