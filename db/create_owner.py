"""Create an owner and print a new API key for it (the key is shown only this once):

.venv/bin/python -m db.create_owner alice          # a new owner + key
.venv/bin/python -m db.create_owner alice --new-key  # another key for an existing owner
.venv/bin/python -m db.create_owner alice --revoke o1l_AbCdEfGh   # revoke keys starting so
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy import select

from db.models import Owner
from db.owners import create_api_key, create_owner, revoke_api_keys
from db.session import make_sessionmaker


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m db.create_owner", description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--new-key", action="store_true", help="add a key to an existing owner")
    ap.add_argument("--revoke", metavar="KEY_PREFIX", help="revoke the owner's keys that start with this")
    ap.add_argument("--database-url", default=None, help="default: the settings' database")
    args = ap.parse_args(argv)
    if args.database_url is None:
        from service.settings import get_settings

        args.database_url = get_settings().resolved_database_url
    with make_sessionmaker(args.database_url)() as session:
        if args.new_key or args.revoke:
            owner = session.scalar(select(Owner).where(Owner.name == args.name))
            if owner is None:
                print(f"no owner named {args.name!r}", file=sys.stderr)
                return 1
            if args.revoke:
                try:
                    n = revoke_api_keys(session, owner_id=owner.id, prefix=args.revoke)
                except ValueError as e:
                    print(e, file=sys.stderr)
                    return 1
                print(f"revoked {n} key(s)")
                return 0 if n else 1
        else:
            try:
                owner = create_owner(session, name=args.name)
            except ValueError as e:
                print(e, file=sys.stderr)
                return 1
        print(create_api_key(session, owner_id=owner.id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
