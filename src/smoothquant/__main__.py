from smoothquant.cli import main

raise SystemExit(main())
