"""A deterministic corpus for measuring redaction: what employees paste, in seven languages.

    python -m router.redaction_corpus          # rewrites the two committed corpus files

Every identifier is generated with valid check digits (python-stdnum, phonenumbers)
and written in the ways people write it (local and international phone formats,
IBANs in any case and grouping, national ids in their usual groupings). Clean
sentences are full of look-alikes (order and case numbers, dates, amounts,
versions, EAN and ISBN codes, Luhn-valid transaction ids) and hold no personal
data. Names, birth dates and addresses are recorded as free-text items: they are
measured apart, since only the model-based detector can find them.

The main corpus and the held-out corpus use different seeds and partly different
sentence frames, so a change tuned to one shows up on the other.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Final

import phonenumbers as pn
from stdnum import ean, iban, luhn
from stdnum.be import nn
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.gb import nhs
from stdnum.iso7064 import mod_11_10
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.pl import pesel
from stdnum.us import ssn

__all__ = ["CORPUS", "HELDOUT", "generate"]

_HERE = Path(__file__).resolve().parent.parent / "tests" / "router" / "data"
CORPUS: Final = _HERE / "redaction_corpus.jsonl"
HELDOUT: Final = _HERE / "redaction_heldout.jsonl"

COUNTRIES: Final = {
    "en": ("GB", "IE", "US"),
    "de": ("DE", "AT"),
    "fr": ("FR", "BE"),
    "nl": ("NL", "BE"),
    "es": ("ES",),
    "it": ("IT",),
    "pl": ("PL",),
}
_NATIONAL: Final = {
    "ES": ("dni", "nie"),
    "NL": ("bsn",),
    "BE": ("nn",),
    "PL": ("pesel",),
    "GB": ("nino", "nhs"),
    "US": ("ssn",),
    "IT": ("cf",),
    "DE": ("idnr",),
    "FR": ("nir",),
}

Item = dict[str, object]
R = random.Random


# -- values -------------------------------------------------------------------------------------


def _digits(r: R, n: int) -> str:
    return "".join(r.choice(string.digits) for _ in range(n))


def _phone(r: R, country: str) -> tuple[str, str]:
    kind = r.choice((pn.PhoneNumberType.FIXED_LINE, pn.PhoneNumberType.MOBILE))
    example = pn.example_number_for_type(country, kind)
    assert example is not None
    base = pn.national_significant_number(example)
    for attempt in range(10_000):
        keep = max(2, len(base) - r.randint(2, 6 if attempt < 500 else 3))
        candidate = base[:keep] + _digits(r, len(base) - keep)
        number = pn.parse("+" + str(example.country_code) + candidate, None)
        if pn.is_valid_number(number):
            break
    else:
        raise RuntimeError(f"no valid {country} number near {base}")
    national = pn.format_number(number, pn.PhoneNumberFormat.NATIONAL)
    intl = pn.format_number(number, pn.PhoneNumberFormat.INTERNATIONAL)
    compact_national = "".join(c for c in national if c.isdigit())
    groups = national.replace("(", "").replace(")", "").split()
    styles: list[tuple[str, str]] = [
        ("national", national),
        ("national", national),
        ("international", intl),
        ("international-00", "00" + intl[1:]),
        ("e164", pn.format_number(number, pn.PhoneNumberFormat.E164)),
    ]
    if country != "US":
        styles.append(("national-compact", compact_national))
    if country in ("DE", "AT", "NL") and len(groups) >= 2:
        styles.append(("national-dashed", groups[0] + "-" + "".join(groups[1:])))
    if country in ("DE", "AT") and len(groups) >= 2:
        styles.append(("national-slash", groups[0] + "/" + " ".join(groups[1:])))
    if country == "FR":
        styles.append(("national-dotted", national.replace(" ", ".")))
    if country == "US":
        d = compact_national
        styles += [("dashed", f"{d[:3]}-{d[3:6]}-{d[6:]}"), ("dotted", f"{d[:3]}.{d[3:6]}.{d[6:]}")]
    return r.choice(styles)


_BBAN: Final = {
    "DE": "n18",
    "AT": "n16",
    "NL": "a4n10",
    "BE": "n12",
    "FR": "n10c11n2",
    "IT": "a1n10c12",
    "ES": "n20",
    "PL": "n24",
    "GB": "a4n14",
    "IE": "a4n14",
}


def _bban(r: R, spec: str) -> str:
    out = []
    i = 0
    while i < len(spec):
        kind = spec[i]
        j = i + 1
        while j < len(spec) and spec[j].isdigit():
            j += 1
        n = int(spec[i + 1 : j])
        pool = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits + string.ascii_uppercase}[
            kind
        ]
        out.append("".join(r.choice(pool) for _ in range(n)))
        i = j
    return "".join(out)


def _iban(r: R, country: str) -> tuple[str, str]:
    cc = country if country in _BBAN else r.choice(sorted(_BBAN))
    while True:
        bban = _bban(r, _BBAN[cc])
        number = cc + iban.calc_check_digits(cc + "00" + bban) + bban
        if iban.is_valid(number):
            break
    spaced = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    return r.choice(
        (
            ("upper-spaced", spaced),
            ("upper-spaced", spaced),
            ("upper-compact", number),
            ("lower-spaced", spaced.lower()),
            ("lower-compact", number.lower()),
            ("dashed", spaced.replace(" ", "-")),
            ("title", spaced[:1] + spaced[1:2].lower() + spaced[2:]),
        )
    )


def _card(r: R) -> tuple[str, str]:
    brand = r.choice(("visa", "visa", "mastercard", "mastercard2", "amex", "discover", "maestro"))
    prefix, length = {
        "visa": ("4", 16),
        "mastercard": (str(r.randint(51, 55)), 16),
        "mastercard2": (str(r.randint(2221, 2720)), 16),
        "amex": (r.choice(("34", "37")), 15),
        "discover": ("6011", 16),
        "maestro": (r.choice(("5018", "6759", "6304")), 16),
    }[brand]
    body = prefix + _digits(r, length - len(prefix) - 1)
    number = body + luhn.calc_check_digit(body)
    if length == 15:
        grouped = f"{number[:4]} {number[4:10]} {number[10:]}"
    else:
        grouped = " ".join(number[i : i + 4] for i in range(0, 16, 4))
    return r.choice((("spaced", grouped), ("dashed", grouped.replace(" ", "-")), ("compact", number)))


def _national(r: R, kind: str) -> tuple[str, str]:
    if kind == "dni":
        n = _digits(r, 8)
        v = n + dni.calc_check_digit(n)
        return r.choice(
            (
                ("compact", v),
                ("dashed", f"{n}-{v[-1]}"),
                ("dotted", f"{n[:2]}.{n[2:5]}.{n[5:]}-{v[-1]}"),
                ("lower", v.lower()),
            )
        )
    if kind == "nie":
        p, n = r.choice("XYZ"), _digits(r, 7)
        v = p + n + nie.calc_check_digit(p + n)
        return r.choice((("compact", v), ("dashed", f"{p}-{n}-{v[-1]}"), ("lower", v.lower())))
    if kind == "bsn":
        while True:
            n = _digits(r, 8)
            check = sum(int(d) * (9 - i) for i, d in enumerate(n)) % 11
            if check < 10 and n[0] != "0" and bsn.is_valid(n + str(check)):
                v = n + str(check)
                break
        return r.choice(
            (
                ("compact", v),
                ("4-2-3 dotted", f"{v[:4]}.{v[4:6]}.{v[6:]}"),
                ("3-3-3", f"{v[:3]} {v[3:6]} {v[6:]}"),
                ("3-3-3 dotted", f"{v[:3]}.{v[3:6]}.{v[6:]}"),
            )
        )
    if kind == "nn":
        while True:
            yy, mm, dd = r.randint(0, 99), r.randint(1, 12), r.randint(1, 28)
            seq = r.randint(1, 997)
            head = f"{yy:02d}{mm:02d}{dd:02d}{seq:03d}"
            base = int(("2" + head) if yy < 25 else head)
            v = head + f"{97 - base % 97:02d}"
            if nn.is_valid(v):
                break
        return r.choice(
            (
                ("dotted", f"{v[:2]}.{v[2:4]}.{v[4:6]}-{v[6:9]}.{v[9:]}"),
                ("spaced", f"{v[:6]} {v[6:9]} {v[9:]}"),
                ("compact", v),
            )
        )
    if kind == "pesel":
        while True:
            year, mm, dd = r.randint(1940, 2015), r.randint(1, 12), r.randint(1, 28)
            m = mm + (20 if year >= 2000 else 0)
            head = f"{year % 100:02d}{m:02d}{dd:02d}{_digits(r, 4)}"
            v = head + pesel.calc_check_digit(head)
            if pesel.is_valid(v):
                return "compact", v
    if kind == "nino":
        first = r.choice("ABCEGHJKLMNPRSTWXYZ")
        second = r.choice("ABCEGHJKLMNPRSTWXYZ".replace("O", ""))
        if first + second in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
            first = "A"
        d, suffix = _digits(r, 6), r.choice("ABCD")
        return r.choice(
            (
                ("spaced", f"{first}{second} {d[:2]} {d[2:4]} {d[4:]} {suffix}"),
                ("compact", f"{first}{second}{d}{suffix}"),
            )
        )
    if kind == "nhs":
        while True:
            n = _digits(r, 9)
            check = 11 - sum(int(c) * (10 - i) for i, c in enumerate(n)) % 11
            check = 0 if check == 11 else check
            if check < 10 and nhs.is_valid(n + str(check)):
                v = n + str(check)
                break
        return r.choice(
            (("spaced", f"{v[:3]} {v[3:6]} {v[6:]}"), ("dashed", f"{v[:3]}-{v[3:6]}-{v[6:]}"), ("compact", v))
        )
    if kind == "ssn":
        while True:
            v = f"{r.randint(1, 899):03d}{r.randint(1, 99):02d}{r.randint(1, 9999):04d}"
            if ssn.is_valid(v):
                break
        return r.choice(
            (("dashed", f"{v[:3]}-{v[3:5]}-{v[5:]}"), ("spaced", f"{v[:3]} {v[3:5]} {v[5:]}"), ("compact", v))
        )
    if kind == "cf":
        letters = "".join(r.choice(string.ascii_uppercase) for _ in range(6))
        head = (
            letters
            + f"{r.randint(40, 99):02d}"
            + r.choice("ABCDEHLMPRST")
            + f"{r.randint(1, 28) + r.choice((0, 40)):02d}"
            + r.choice("ABCDEFGHILM")
            + f"{r.randint(1, 999):03d}"
        )
        v = head + codicefiscale.calc_check_digit(head)
        assert codicefiscale.is_valid(v)
        return r.choice((("upper", v), ("upper", v), ("lower", v.lower())))
    if kind == "idnr":
        while True:
            pool = list(string.digits)
            r.shuffle(pool)
            body = pool[:9]
            body.insert(r.randint(0, 9), r.choice(body))
            head = "".join(body)
            if head[0] == "0":
                continue
            v = head + mod_11_10.calc_check_digit(head)
            if idnr.is_valid(v):
                break
        return r.choice((("spaced", f"{v[:2]} {v[2:5]} {v[5:8]} {v[8:]}"), ("compact", v)))
    if kind == "nir":
        while True:
            sex, year, month = r.randint(1, 2), r.randint(40, 99), r.randint(1, 12)
            place = f"{r.randint(1, 95):02d}{r.randint(1, 999):03d}{r.randint(1, 999):03d}"
            head = f"{sex}{year:02d}{month:02d}{place}"
            v = head + f"{97 - int(head) % 97:02d}"
            if nir.is_valid(v):
                break
        return r.choice(
            (("spaced", f"{v[0]} {v[1:3]} {v[3:5]} {v[5:7]} {v[7:10]} {v[10:13]} {v[13:]}"), ("compact", v))
        )
    raise ValueError(kind)


_FIRST: Final = {
    "en": ("siobhan", "sean", "niamh", "oliver", "amelia", "james", "chloé", "zoë"),
    "de": ("jürgen", "anna-lena", "björn", "maximilian", "sören", "käthe", "lukas"),
    "fr": ("françois", "élodie", "jérôme", "anaïs", "noël", "hélène", "céline"),
    "nl": ("joost", "anouk", "ruud", "saskia", "bram", "fenna"),
    "es": ("maría", "josé", "íñigo", "begoña", "lucía", "andrés"),
    "it": ("niccolò", "giulia", "mattia", "ilaria", "andrea", "federica"),
    "pl": ("łukasz", "żaneta", "małgorzata", "krzysztof", "agnieszka", "paweł"),
}
_LAST: Final = {
    "en": ("o'brien", "mcdonald", "smith", "o'neill", "walsh", "d'arcy"),
    "de": ("müller", "schröder", "weiß", "becker", "hoffmann", "krüger"),
    "fr": ("lefèvre", "d'alembert", "girard", "mercier", "bonnaire"),
    "nl": ("de-vries", "jansen", "van-dijk", "bakker", "visser"),
    "es": ("garcía", "fernández", "muñoz", "lópez", "sánchez"),
    "it": ("d'angelo", "rossi", "bianchi", "esposito", "colombo"),
    "pl": ("wiśniewski", "kowalczyk", "wójcik", "kamińska", "lewandowski"),
}
_DOMAINS: Final = (
    "example.com",
    "klinik-nord.de",
    "banque-sud.fr",
    "hse.ie",
    "nhs.net",
    "ziekenhuis.nl",
    "ejemplo.es",
    "ospedale.it",
    "szpital.pl",
    "kanzlei-weber.at",
    "bäckerei-müller.de",
    "mail.co.uk",
    "uzleuven.be",
)


def _email(r: R, lang: str) -> tuple[str, str]:
    first, last = r.choice(_FIRST[lang]), r.choice(_LAST[lang])
    local = r.choice(
        (f"{first}.{last}", f"{first[0]}.{last}", f"{first}{r.randint(1, 99)}", f"{last}+{first}")
    )
    domain = r.choice(_DOMAINS)
    kind = "ascii" if local.isascii() and "'" not in local else "apostrophe" if "'" in local else "accented"
    if not domain.isascii():
        kind = "idn-domain"
    return kind, f"{local}@{domain}"


def _ip(r: R) -> tuple[str, str]:
    if r.random() < 0.75:
        first = r.choice((10, 172, 192, 81, 62, 145, 213))
        return "v4", f"{first}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
    groups = [f"{r.randint(0, 0xFFFF):x}" for _ in range(5)]
    return "v6", f"2001:db8:{groups[0]}:{groups[1]}::{groups[2]}:{groups[3]}"


# -- sentences ----------------------------------------------------------------------------------

_LABELS: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "en": {
        "PHONE": ("call me on", "my mobile is", "phone:", "reach her at", "tel.", ""),
        "EMAIL": ("email", "write to", "his address is", ""),
        "IBAN": ("IBAN", "please pay into", "account:", ""),
        "CARD": ("card number", "the Visa ending in the number", "charged to card", ""),
        "IP_ADDRESS": ("from IP", "login from", "client address"),
        "nino": ("NI number", "National Insurance no.", ""),
        "nhs": ("NHS number", "NHS no."),
        "ssn": ("SSN", "social security number", "SSN:"),
    },
    "de": {
        "PHONE": ("Telefon", "Handy:", "erreichbar unter", "Rückruf an", "Tel.", ""),
        "EMAIL": ("E-Mail", "Mail an", "Adresse:", ""),
        "IBAN": ("IBAN", "bitte überweisen auf", "Kontoverbindung:", ""),
        "CARD": ("Kreditkarte", "Kartennummer", "belastet auf Karte", ""),
        "IP_ADDRESS": ("IP-Adresse", "Zugriff von", "Login von"),
        "idnr": ("Steuer-ID", "Steuer-Identifikationsnummer", ""),
    },
    "fr": {
        "PHONE": ("téléphone", "portable :", "joignable au", "tél.", ""),
        "EMAIL": ("courriel", "écrire à", "adresse :", ""),
        "IBAN": ("IBAN", "virement sur", "compte :", ""),
        "CARD": ("carte bancaire", "numéro de carte", ""),
        "IP_ADDRESS": ("adresse IP", "connexion depuis"),
        "nir": ("numéro de sécurité sociale", "NIR", ""),
        "nn": ("numéro national", "registre national", ""),
    },
    "nl": {
        "PHONE": ("bel", "telefoon:", "mobiel", "bereikbaar op", "tel.", ""),
        "EMAIL": ("e-mail", "mail naar", "adres:", ""),
        "IBAN": ("IBAN", "overmaken naar", "rekening:", ""),
        "CARD": ("creditcard", "kaartnummer", ""),
        "IP_ADDRESS": ("IP-adres", "ingelogd vanaf"),
        "bsn": ("BSN", "burgerservicenummer", "BSN:"),
        "nn": ("rijksregisternummer", "INSZ", ""),
    },
    "es": {
        "PHONE": ("teléfono", "móvil:", "llamar al", "tel.", ""),
        "EMAIL": ("correo", "escribir a", "dirección:", ""),
        "IBAN": ("IBAN", "transferir a", "cuenta:", ""),
        "CARD": ("tarjeta", "número de tarjeta", ""),
        "IP_ADDRESS": ("IP", "acceso desde"),
        "dni": ("DNI", "con DNI", ""),
        "nie": ("NIE", "con NIE", ""),
    },
    "it": {
        "PHONE": ("telefono", "cellulare:", "chiamare il", "tel.", ""),
        "EMAIL": ("email", "scrivere a", "indirizzo:", ""),
        "IBAN": ("IBAN", "bonifico su", "conto:", ""),
        "CARD": ("carta di credito", "numero carta", ""),
        "IP_ADDRESS": ("indirizzo IP", "accesso da"),
        "cf": ("codice fiscale", "C.F.", ""),
    },
    "pl": {
        "PHONE": ("telefon", "komórka:", "proszę dzwonić pod", "tel.", ""),
        "EMAIL": ("e-mail", "proszę pisać na", "adres:", ""),
        "IBAN": ("IBAN", "przelew na", "konto:", ""),
        "CARD": ("karta", "numer karty", ""),
        "IP_ADDRESS": ("adres IP", "logowanie z"),
        "pesel": ("PESEL", "nr PESEL", ""),
    },
}
# Written bare, these formats are only recognisable by their label.
_NEEDS_LABEL: Final = {("ssn", "compact"), ("bsn", "compact"), ("nhs", "compact")}

_FRAMES: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    # (main frames, held-out frames); {a} {b}: identifiers, {who}: a name, {dob}, {addr}
    "en": (
        (
            "Hi, this is {who} - {a}.",
            "Please update the record for {who}: {a}, {b}.",
            "Customer complaint, {a}. She also mentioned {b}",
            "Can you draft a reply? Details: {a} ({who}, born {dob})",
            "Patient {who}, {addr}; {a}.",
            "{a} - that is what the form says.",
            "Summarise: caller gave {a} and asked about the refund.",
        ),
        (
            "Note from the ward: {who} ({a}) wants a call back.",
            "Forwarding this: {a}; {b}; lives at {addr}.",
            "Translate into German: 'my details are {a}'.",
        ),
    ),
    "de": (
        (
            "Hallo, hier ist {who}, {a}.",
            "Bitte Stammdaten von {who} ändern: {a}, {b}.",
            "Beschwerde eingegangen, {a}. Außerdem: {b}",
            "Entwurf einer Antwort an {who} (geb. {dob}), {a}",
            "Patientin {who}, {addr}; {a}.",
            "{a} - so steht es im Formular.",
            "Kurz zusammenfassen: Anrufer nannte {a} und fragte nach der Erstattung.",
        ),
        (
            "Notiz von Station 3: {who} ({a}) bittet um Rückruf.",
            "Weiterleitung: {a}; {b}; wohnhaft {addr}.",
            "Übersetze ins Englische: 'meine Daten: {a}'.",
        ),
    ),
    "fr": (
        (
            "Bonjour, ici {who}, {a}.",
            "Merci de mettre à jour le dossier de {who} : {a}, {b}.",
            "Réclamation client, {a}. Il a aussi indiqué {b}",
            "Rédige une réponse à {who} (né le {dob}), {a}",
            "Patiente {who}, {addr} ; {a}.",
            "{a} - c'est ce qu'indique le formulaire.",
        ),
        (
            "Message du service : {who} ({a}) demande à être rappelée.",
            "Je transfère : {a} ; {b} ; domicile {addr}.",
        ),
    ),
    "nl": (
        (
            "Hallo, met {who}, {a}.",
            "Graag de gegevens van {who} aanpassen: {a}, {b}.",
            "Klacht ontvangen, {a}. Verder: {b}",
            "Schrijf een antwoord aan {who} (geboren {dob}), {a}",
            "Patiënt {who}, {addr}; {a}.",
            "{a} - dat staat op het formulier.",
        ),
        (
            "Bericht van de afdeling: {who} ({a}) wil teruggebeld worden.",
            "Doorgestuurd: {a}; {b}; woont op {addr}.",
        ),
    ),
    "es": (
        (
            "Hola, soy {who}, {a}.",
            "Actualizar la ficha de {who}: {a}, {b}.",
            "Reclamación recibida, {a}. También indicó {b}",
            "Redacta una respuesta a {who} (nacida el {dob}), {a}",
            "Paciente {who}, {addr}; {a}.",
            "{a} - así figura en el formulario.",
        ),
        (
            "Aviso de planta: {who} ({a}) pide que la llamen.",
            "Reenvío: {a}; {b}; domicilio {addr}.",
        ),
    ),
    "it": (
        (
            "Buongiorno, sono {who}, {a}.",
            "Aggiornare la scheda di {who}: {a}, {b}.",
            "Reclamo ricevuto, {a}. Ha indicato anche {b}",
            "Scrivi una risposta a {who} (nato il {dob}), {a}",
            "Paziente {who}, {addr}; {a}.",
            "{a} - così risulta dal modulo.",
        ),
        (
            "Nota dal reparto: {who} ({a}) chiede di essere richiamato.",
            "Inoltro: {a}; {b}; residente in {addr}.",
        ),
    ),
    "pl": (
        (
            "Dzień dobry, tu {who}, {a}.",
            "Proszę zaktualizować dane {who}: {a}, {b}.",
            "Reklamacja klienta, {a}. Podał też {b}",
            "Napisz odpowiedź do {who} (ur. {dob}), {a}",
            "Pacjentka {who}, {addr}; {a}.",
            "{a} - tak jest w formularzu.",
        ),
        (
            "Notatka z oddziału: {who} ({a}) prosi o kontakt.",
            "Przekazuję: {a}; {b}; adres {addr}.",
        ),
    ),
}

_STREETS: Final = {
    "en": (
        "{n} Baker Street, London NW1 6XE",
        "{n} Grafton Street, Dublin 2",
        "{n} Elm Ave, Springfield, IL 62704",
    ),
    "de": ("Hauptstraße {n}, 10115 Berlin", "Lindenweg {n}, 1010 Wien", "Am Markt {n}, 80331 München"),
    "fr": ("{n} rue de la Paix, 75002 Paris", "{n} avenue Louise, 1050 Bruxelles"),
    "nl": ("Kerkstraat {n}, 1017 GC Amsterdam", "Meir {n}, 2000 Antwerpen"),
    "es": ("Calle Mayor {n}, 28013 Madrid", "Avenida Diagonal {n}, 08019 Barcelona"),
    "it": ("Via Roma {n}, 00184 Roma", "Corso Buenos Aires {n}, 20124 Milano"),
    "pl": ("ul. Marszałkowska {n}, 00-624 Warszawa", "ul. Floriańska {n}, 31-019 Kraków"),
}


def _who(r: R, lang: str) -> str:
    first, last = r.choice(_FIRST[lang]), r.choice(_LAST[lang])
    return f"{first.title()} {last.replace('-', ' ').title()}"


def _dob(r: R, lang: str) -> str:
    y, m, d = r.randint(1935, 2005), r.randint(1, 12), r.randint(1, 28)
    return f"{m:02d}/{d:02d}/{y}" if lang == "en" and r.random() < 0.3 else f"{d:02d}.{m:02d}.{y}"


def _item(r: R, lang: str, country: str, kind: str) -> tuple[str, Item]:
    """A labelled identifier for a sentence, and its item record (offsets filled in later)."""
    sub = kind
    if kind == "PHONE":
        fmt, value = _phone(r, country)
    elif kind == "EMAIL":
        fmt, value = _email(r, lang)
    elif kind == "IBAN":
        fmt, value = _iban(r, country)
    elif kind == "CARD":
        fmt, value = _card(r)
    elif kind == "IP_ADDRESS":
        fmt, value = _ip(r)
    else:
        sub = r.choice(_NATIONAL[country])
        fmt, value = _national(r, sub)
    labels = _LABELS[lang].get(sub) or _LABELS["en"][sub]
    label = r.choice(labels)
    if (sub, fmt) in _NEEDS_LABEL and not label:
        label = labels[0]
    text = f"{label} {value}" if label else value
    item: Item = {
        "type": kind,
        "value": value,
        "format": f"{sub}:{fmt}" if sub != kind else fmt,
        "country": country,
    }
    return text, item


def _pii_sentence(r: R, lang: str, frames: tuple[str, ...]) -> dict[str, object]:
    country = r.choice(COUNTRIES[lang])
    kinds = ["PHONE", "PHONE", "EMAIL", "IBAN", "CARD", "IP_ADDRESS"]
    if country in _NATIONAL:
        kinds += ["NATIONAL_ID", "NATIONAL_ID"]
    if country == "US":
        kinds.remove("IBAN")
    frame = r.choice(frames)
    slots: dict[str, tuple[str, Item | None]] = {}
    for name in ("a", "b"):
        if "{" + name + "}" in frame:
            text, item = _item(r, lang, country, r.choice(kinds))
            slots[name] = (text, item)
    if "{who}" in frame:
        slots["who"] = (_who(r, lang), {"type": "PERSON"})
    if "{dob}" in frame:
        slots["dob"] = (_dob(r, lang), {"type": "BIRTH_DATE"})
    if "{addr}" in frame:
        slots["addr"] = (r.choice(_STREETS[lang]).format(n=r.randint(1, 120)), {"type": "ADDRESS"})
    return _fill(frame, slots, lang)


def _fill(frame: str, slots: dict[str, tuple[str, Item | None]], lang: str) -> dict[str, object]:
    """Fill the frame, recording where each item's value landed."""
    out, items, pos = [], [], 0
    i = 0
    while i < len(frame):
        if frame[i] == "{":
            j = frame.index("}", i)
            text, item = slots[frame[i + 1 : j]]
            if item is not None:
                value = str(item.get("value", text))
                start = pos + text.rindex(value)
                items.append({**item, "value": value, "start": start, "end": start + len(value)})
            out.append(text)
            pos += len(text)
            i = j + 1
        else:
            out.append(frame[i])
            pos += 1
            i += 1
    return {"lang": lang, "text": "".join(out), "items": items}


# -- clean sentences with look-alikes -------------------------------------------------------------


def _luhn_id(r: R, prefix: str, n: int) -> str:
    body = prefix + _digits(r, n - len(prefix) - 1)
    return body + luhn.calc_check_digit(body)


def _ean13(r: R) -> str:
    while True:
        body = r.choice(("400", "401", "402", "40", "50", "54", "76", "80", "84", "87", "590", "560"))
        body += _digits(r, 12 - len(body))
        code = body + ean.calc_check_digit(body)
        if r.random() < 0.5 or luhn.is_valid(code):  # half of them also pass Luhn
            return code


def _isbn(r: R) -> str:
    body = "978" + r.choice(("3", "2", "84", "88", "83", "90", "1"))
    body += _digits(r, 12 - len(body))
    code = body + ean.calc_check_digit(body)
    return r.choice((code, f"{code[:3]}-{code[3]}-{code[4:7]}-{code[7:12]}-{code[12]}"))


_CLEAN_WORDS: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "en": {
        "order": ("Order", "Order no.", "Invoice"),
        "case": ("Case", "Ref."),
        "txn": ("Transaction ID", "Txn"),
        "on": ("on", "due"),
        "total": ("total", "amount"),
        "ver": ("version", "release"),
    },
    "de": {
        "order": ("Bestellnummer", "Auftrag", "Rechnung Nr."),
        "case": ("Az.", "Vorgang"),
        "txn": ("Transaktions-ID", "Transaktion"),
        "on": ("am", "fällig am"),
        "total": ("Summe", "Betrag"),
        "ver": ("Version", "Release"),
    },
    "fr": {
        "order": ("Commande", "Facture n°"),
        "case": ("Dossier", "Réf."),
        "txn": ("Transaction", "ID de transaction"),
        "on": ("le", "échéance le"),
        "total": ("total", "montant"),
        "ver": ("version", "build"),
    },
    "nl": {
        "order": ("Bestelling", "Factuur"),
        "case": ("Zaak", "Kenmerk"),
        "txn": ("Transactie", "Transactie-ID"),
        "on": ("op", "vervaldatum"),
        "total": ("totaal", "bedrag"),
        "ver": ("versie", "build"),
    },
    "es": {
        "order": ("Pedido", "Factura n.º"),
        "case": ("Expediente", "Ref."),
        "txn": ("Transacción", "ID de transacción"),
        "on": ("el", "vence el"),
        "total": ("total", "importe"),
        "ver": ("versión", "build"),
    },
    "it": {
        "order": ("Ordine", "Fattura n."),
        "case": ("Pratica", "Rif."),
        "txn": ("Transazione", "ID transazione"),
        "on": ("il", "scadenza"),
        "total": ("totale", "importo"),
        "ver": ("versione", "build"),
    },
    "pl": {
        "order": ("Zamówienie", "Faktura nr"),
        "case": ("Sprawa", "Sygnatura"),
        "txn": ("Transakcja", "ID transakcji"),
        "on": ("dnia", "termin"),
        "total": ("razem", "kwota"),
        "ver": ("wersja", "build"),
    },
}

_CLEAN_FRAMES: Final = (
    "{order} {orderno} {on} {date}, {total} {amount}.",
    "{case} {caseno}: {on} {date} {time}, {total} {amount}",
    "{txn} {txnid} - {total} {amount}",
    "{item} {ean}, {qty} x, {total} {amount}",
    "{ean} x {qty}, {total} {amount}",
    "{ver} {version} ({on} {date})",
    "{order} {orderno}; ISBN {isbn}; {on} {date}",
    "Update {version} -> {version2} {on} {date}, {pct}%",
    "{date} {time} {amount} {order} {orderno}",
    "{txn} {txnid}, {order} {orderno}",
    "{case} {caseno} / {order} {orderno} / {amount}",
)


def _clean_sentence(r: R, lang: str) -> dict[str, object]:
    w = _CLEAN_WORDS[lang]
    y = r.randint(2019, 2026)
    m, d = r.randint(1, 12), r.randint(1, 28)
    values = {
        "order": r.choice(w["order"]),
        "case": r.choice(w["case"]),
        "txn": r.choice(w["txn"]),
        "on": r.choice(w["on"]),
        "total": r.choice(w["total"]),
        "ver": r.choice(w["ver"]),
        "item": r.choice(("EAN", "GTIN", "EAN-13")),
        "orderno": r.choice(
            (
                f"{y}-{_digits(r, 6)}",
                _digits(r, 9),
                f"ORD-{_digits(r, 5)}",
                f"{y}/{_digits(r, 5)}",
                _digits(r, 10),
                _digits(r, 11),
            )
        ),
        "caseno": r.choice(
            (
                f"{r.randint(1, 9)} O {r.randint(1, 999)}/{y % 100}",
                f"C-{r.randint(1, 999)}/{y % 100}",
                f"{y}-{_digits(r, 6)}",
                f"RG {y % 100}/{_digits(r, 5)}",
            )
        ),
        "date": r.choice(
            (
                f"{d:02d}-{m:02d}-{y}",
                f"{y}-{m:02d}-{d:02d}",
                f"{d}.{m}.{y}",
                f"{d:02d}/{m:02d}/{y}",
                f"{d:02d}.{m:02d}.{y % 100:02d}",
                f"{d:02d} {m:02d} {y}",
            )
        ),
        "time": r.choice(
            (
                f"{r.randint(7, 19)}:{r.choice(('00', '15', '30', '45'))}",
                f"{r.randint(7, 19)}h{r.randint(0, 5)}0",
            )
        ),
        "amount": r.choice(
            (
                f"{r.randint(100, 999)} {r.randint(0, 999):03d},{r.randint(0, 99):02d} EUR",
                f"{r.randint(1, 9)}.{r.randint(0, 999):03d}.{r.randint(0, 999):03d},{r.randint(0, 99):02d} €",
                f"${r.randint(1, 99)},{r.randint(0, 999):03d}.{r.randint(0, 99):02d}",
                f"{r.randint(1, 99)} {r.randint(0, 999):03d} zł",
                f"€ {r.randint(1, 9)} {r.randint(0, 999):03d}",
                f"£{r.randint(1, 999)}.{r.randint(0, 99):02d}",
            )
        ),
        "txnid": r.choice(
            (
                _luhn_id(r, "4", 16),
                _luhn_id(r, str(r.randint(51, 55)), 16),
                _digits(r, 16),
                _luhn_id(r, "6011", 16),
            )
        ),
        "ean": _ean13(r),
        "isbn": _isbn(r),
        "qty": str(r.randint(1, 40)),
        "version": r.choice(
            (
                f"{r.randint(1, 12)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}",
                f"v{r.randint(1, 5)}.{r.randint(0, 30)}.{r.randint(0, 9)}",
                f"10.0.{r.randint(10000, 22999)}.{r.randint(100, 4000)}",
            )
        ),
        "version2": f"{r.randint(1, 12)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}",
        "pct": f"{r.randint(1, 99)},{r.randint(0, 9)}",
    }
    return {"lang": lang, "text": r.choice(_CLEAN_FRAMES).format(**values), "items": [], "clean": True}


def generate(seed: int, *, pii: int, clean: int, heldout: bool) -> list[dict[str, object]]:
    r = random.Random(seed)
    langs = sorted(COUNTRIES)
    rows: list[dict[str, object]] = []
    for i in range(pii):
        lang = langs[i % len(langs)]
        main, held = _FRAMES[lang]
        rows.append({"clean": False, **_pii_sentence(r, lang, held if heldout else main)})
    for i in range(clean):
        rows.append(_clean_sentence(r, langs[i % len(langs)]))
    for n, row in enumerate(rows):
        row["id"] = n
    return rows


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    _write(CORPUS, generate(14, pii=600, clean=200, heldout=False))
    _write(HELDOUT, generate(4114, pii=300, clean=100, heldout=True))


if __name__ == "__main__":
    main()
