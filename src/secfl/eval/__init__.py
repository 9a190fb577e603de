"""The research harness: the production rules, audit, tasks and training run in one
process without the transport, under attack, over a grid of settings.

- :mod:`secfl.eval.simulation` — one federated run in memory (the same strategies,
  clone audit and training as the runtime), with attackers;
- :mod:`secfl.eval.attacks` — the attacks (evaluation only: no policy can turn one on);
- :mod:`secfl.eval.grid` — a grid of runs over tasks, partitions, attacker fractions,
  attacks and defences: a preset changed by a command line's options, and its rows;
- :mod:`secfl.eval.folder` — a grid's folder: its settings, its finished runs (so a
  grid can be stopped and resumed) and the worker processes adding to it;
- :mod:`secfl.eval.report` — the grid's report (CSV, JSON, Markdown, plots).

The runtime (``secfl.fl``, ``secfl.spm``, ``secfl.launcher``, ...) never imports this
package; a test keeps it so.
"""
