"""Create, update and delete library rows step by step, as the demo shows them replicating.

Each step prints ``step N/M: what it does``; the last line says how many outbox events are left
(0: everything committed was published).
"""

import datetime
import time
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from cqrs_celery.beat import relay_outbox
from cqrs_celery.master.outbox import pending
from library.cqrs import changed_by
from library.models import Author, Book, Stock

AUTHORS = [
    ('Ursula K. Le Guin', 'United States'),
    ('Frank Herbert', 'United States'),
    ('Octavia E. Butler', 'United States'),
    ('Unknown Author', ''),
]
BOOKS = [
    # title, author, price, published, copies
    ('A Wizard of Earthsea', 'Ursula K. Le Guin', '9.99', datetime.date(1968, 11, 1), 5),
    ('The Left Hand of Darkness', 'Ursula K. Le Guin', '12.50', datetime.date(1969, 3, 1), 3),
    ('Dune', 'Frank Herbert', '14.99', datetime.date(1965, 8, 1), 8),
    ('Kindred', 'Octavia E. Butler', '11.00', datetime.date(1979, 6, 1), 4),
    ('Untitled Draft', 'Unknown Author', '1.00', None, 1),
]


class Command(BaseCommand):
    help = 'Make a series of changes on the master (the demo runs this while a replica worker applies them).'

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('--pause', type=float, default=1.0, help='Seconds to wait after each step.')

    def handle(self, *args: Any, pause: float = 1.0, **options: Any) -> None:
        steps = [
            ('create four authors', self.create_authors),
            ('create five books, each with its stock (one transaction per book)', self.create_books),
            ('admin alice renames an author and changes two prices and a title', self.edit),
            ('sell copies: stock goes down (the raw replica logs old and new quantity)', self.sell),
            ('bulk update: every Le Guin book reprinted (Book.cqrs.bulk_update)', self.reprint),
            ('delete the unknown author: their book and its stock go too (cascade)', self.delete_draft),
        ]
        for number, (text, step) in enumerate(steps, start=1):
            self.say(f'step {number}/{len(steps)}: {text}')
            with changed_by('demo'):
                step()
            time.sleep(pause)
        self.relay()

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def create_authors(self) -> None:
        for name, country in AUTHORS:
            Author.objects.create(name=name, country=country)

    def create_books(self) -> None:
        for title, author, price, published, copies in BOOKS:
            with transaction.atomic():
                book = Book.objects.create(title=title, author=Author.objects.get(name=author),
                                           price=Decimal(price), published=published)
                Stock.objects.create(book=book, quantity=copies)

    def edit(self) -> None:
        with changed_by('admin:alice'), transaction.atomic():
            butler = Author.objects.get(name='Octavia E. Butler')
            butler.name = 'Octavia Estelle Butler'
            butler.save()
            for title, price in (('Dune', '16.99'), ('The Left Hand of Darkness', '13.50')):
                book = Book.objects.get(title=title)
                book.price = Decimal(price)
                book.save()
            # Saved twice in one transaction: replicas get one message, with the first old title.
            wizard = Book.objects.get(title='A Wizard of Earthsea')
            wizard.title = 'A Wizard of Earthsea (illustrated)'
            wizard.save()
            wizard.price = Decimal('24.00')
            wizard.save()

    def sell(self) -> None:
        for title in ('Dune', 'Dune', 'Kindred'):
            with transaction.atomic():
                stock = Stock.objects.select_for_update().get(book__title=title)
                stock.quantity -= 1
                stock.save()

    def reprint(self) -> None:
        books = Book.objects.filter(author__name='Ursula K. Le Guin')
        Book.cqrs.bulk_update(books, published=datetime.date(2024, 9, 1))

    def delete_draft(self) -> None:
        Author.objects.get(name='Unknown Author').delete()

    def relay(self) -> None:
        """Publish whatever the commits above could not (nothing, when the broker was up)."""
        deadline = time.monotonic() + 30
        while pending() and time.monotonic() < deadline:
            relay_outbox()  # the beat task, run here and now
            time.sleep(0.5)
        left = pending()
        self.say(f'outbox: {left} events pending')
        if left:
            raise CommandError(f'{left} outbox events could not be published; is the broker up?')
