"""``secfl run``: start any workload inside a TEE with secrets only an attested workload receives.

:func:`secfl.launcher.launch.prepare` verifies the SPM, attests, receives the
identity and secrets, opens and checks the volumes and builds the command;
:func:`secfl.launcher.launch.execute` runs it, forwarding signals, and cleans up.
"""
