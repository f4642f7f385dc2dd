"""Task-aware heterogeneous drafts (issue 6).

  kmeans.py, classifier.py, describe.py, embed.py, fit.py, artifact.py
      partition a prompt set into tasks, classify new prompts online, save a versioned artifact
  lora.py, trainfwd.py, distill.py, align.py
      per-task LoRA adapters on the draft, distilled from the target (``specrouter align``)
  routing.py, pool.py
      label rows at admission, per-task acceptance statistics, aligned drafts as pool levels
  cli.py
      ``specrouter tasks fit|eval`` and ``specrouter align``
"""
