"""Where trainings run: one job's body (job), local processes or stacked copies (local), Ray
tasks (cluster), the choice between them (executor) and the progress bars (progress). The
workflows ask an executor and never know which."""
