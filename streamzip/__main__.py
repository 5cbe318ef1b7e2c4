from streamzip.cli import main

raise SystemExit(main())
