from llmrt.cli import main

raise SystemExit(main())
