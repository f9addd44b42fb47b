from rlm.bench.cli import main

raise SystemExit(main())
