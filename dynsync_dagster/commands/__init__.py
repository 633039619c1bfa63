"""What users run: the `dynsync` CLI, the demo, `dynsync dev` and `dynsync validate`."""
