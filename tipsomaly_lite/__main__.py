from tipsomaly_lite.cli import main

raise SystemExit(main())
