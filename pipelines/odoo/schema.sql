-- An Odoo 17.0 or 18.0 shaped source database: the tables, columns and PostgreSQL types that the
-- Odoo ORM creates for the models the finance mart reads (base, product, uom, account, sale).
--
-- Checked against the odoo/odoo model definitions of the 17.0 and 18.0 branches (fields -> column
-- types as the ORM maps them):
--   odoo/addons/base/models/res_currency.py, res_company.py, res_partner.py, res_users.py,
--   res_country.py, ir_config_parameter.py, ir_module.py
--   addons/product/models/product_category.py, product_template.py, product_product.py
--   addons/uom/models/uom_uom.py
--   addons/account/models/account_move.py, account_move_line.py, account_tax.py,
--   account_journal.py, account_account.py, account_payment_term.py
--   addons/sale/models/sale_order.py, sale_order_line.py, account_move_line.py,
--   product_template.py
-- A column line ending in `-- @odoo 17.0` or `-- @odoo 18.0` exists in that version only (the
-- generator's --odoo-version keeps the lines of its version); every other line is in both:
--   res_currency.currency_unit_label, currency_subunit_label: Char in 17.0 (varchar), Char
--     translate=True in 18.0 (jsonb {"en_US": ...});
--   res_company.company_registry, color: stored in 17.0; in 18.0 company_registry is the
--     partner's (related, not stored) and color is computed from the root company, not stored;
--   product_template.detailed_type: 17.0 only (a Selection consu/service, `type` computed from
--     it and stored); 18.0 removed it: `type` (consu/service/combo) is the field itself;
--   account_move.to_check (17.0) became account_move.checked (18.0, "Reviewed", the opposite
--     sense: true once posted by a user who may review).
-- ir_module_module (base/ir_module.py) says which version a database is: the `base` module's
-- `latest_version` is "17.0.x.y" or "18.0.x.y"; the extraction reads it.
-- ORM type mapping used throughout:
--   Char -> varchar (varchar(n) with size=n), translatable Char/Text/Html -> jsonb {"en_US": ...},
--   Text/Html -> text, Boolean -> boolean, Integer -> integer, Many2one -> integer (FK, named
--   <table>_<column>_fkey), Selection -> varchar, Date -> date, Datetime -> timestamp without
--   time zone (UTC), Monetary -> numeric, Float with digits -> numeric, Float without digits ->
--   double precision, Json -> jsonb.  Every model table has id serial, create_uid, create_date,
--   write_uid, write_date. Many2many tables are <a>_<b>_rel with (col1, col2) primary key.
-- Only the stored columns a sales/finance mart needs are present; computed non-stored fields and
-- columns of modules not modelled here (stock, crm, utm, mail) are left out.
--
-- The file has two parts. The generator runs the first (tables), bulk-loads rows with COPY, then
-- runs the part after the `-- @constraints` marker (foreign keys and indexes, as Odoo has them).

-- ---------------------------------------------------------------------------------- base
create table ir_config_parameter (
    id serial primary key,
    key varchar not null,
    value text not null,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);
-- The generator's mark: it only ever drops tables of a database whose ir_config_parameter
-- carries this comment (a real Odoo's says "System Parameter").
comment on table ir_config_parameter is 'control_room.generator';

create table ir_module_module (
    id serial primary key,
    name varchar not null,
    state varchar,
    latest_version varchar,
    author varchar,
    license varchar,
    application boolean,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table res_currency (
    id serial primary key,
    name varchar(3) not null,
    full_name varchar,
    symbol varchar not null,
    rounding numeric,
    decimal_places integer,
    active boolean,
    position varchar,
    currency_unit_label varchar,            -- @odoo 17.0
    currency_unit_label jsonb,              -- @odoo 18.0
    currency_subunit_label varchar,         -- @odoo 17.0
    currency_subunit_label jsonb,           -- @odoo 18.0
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table res_country (
    id serial primary key,
    name jsonb not null,
    code varchar(2),
    currency_id integer,
    phone_code integer,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table res_partner (
    id serial primary key,
    name varchar,
    complete_name varchar,
    company_id integer,
    parent_id integer,
    commercial_partner_id integer,
    commercial_company_name varchar,
    company_name varchar,
    type varchar,
    ref varchar,
    lang varchar,
    tz varchar,
    user_id integer,
    vat varchar,
    company_registry varchar,
    website varchar,
    comment text,
    active boolean,
    employee boolean,
    function varchar,
    street varchar,
    street2 varchar,
    zip varchar,
    city varchar,
    country_id integer,
    email varchar,
    phone varchar,
    mobile varchar,
    is_company boolean,
    color integer,
    partner_share boolean,
    customer_rank integer,
    supplier_rank integer,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table res_company (
    id serial primary key,
    name varchar not null,
    partner_id integer not null,
    currency_id integer not null,
    sequence integer,
    parent_id integer,
    parent_path varchar,
    email varchar,
    phone varchar,
    company_registry varchar,               -- @odoo 17.0
    color integer,                          -- @odoo 17.0
    active boolean,
    account_fiscal_country_id integer,
    tax_calculation_rounding_method varchar,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table res_users (
    id serial primary key,
    login varchar not null,
    partner_id integer not null,
    company_id integer not null,
    active boolean,
    share boolean,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table res_currency_rate (
    id serial primary key,
    name date not null,
    rate numeric,
    currency_id integer not null,
    company_id integer,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

-- ---------------------------------------------------------------------------------- uom, product
create table uom_category (
    id serial primary key,
    name jsonb not null,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table uom_uom (
    id serial primary key,
    name jsonb not null,
    category_id integer not null,
    factor numeric not null,
    rounding numeric not null,
    active boolean,
    uom_type varchar not null,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table product_category (
    id serial primary key,
    name varchar not null,
    complete_name varchar,
    parent_id integer,
    parent_path varchar,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table product_template (
    id serial primary key,
    name jsonb not null,
    sequence integer,
    description jsonb,
    description_purchase jsonb,
    description_sale jsonb,
    detailed_type varchar not null,         -- @odoo 17.0
    type varchar not null,
    categ_id integer not null,
    list_price numeric,
    volume numeric,
    weight numeric,
    sale_ok boolean,
    purchase_ok boolean,
    uom_id integer not null,
    uom_po_id integer not null,
    company_id integer,
    active boolean,
    color integer,
    default_code varchar,
    priority varchar,
    invoice_policy varchar,
    service_type varchar,
    expense_policy varchar,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table product_product (
    id serial primary key,
    product_tmpl_id integer not null,
    default_code varchar,
    active boolean,
    barcode varchar,
    combination_indices varchar,
    volume numeric,
    weight numeric,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

-- ---------------------------------------------------------------------------------- account setup
create table account_account (
    id serial primary key,
    name jsonb not null,
    currency_id integer,
    code varchar(64) not null,
    deprecated boolean,
    account_type varchar not null,
    internal_group varchar,
    reconcile boolean,
    company_id integer not null,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table account_journal (
    id serial primary key,
    name jsonb not null,
    code varchar(5) not null,
    active boolean,
    type varchar not null,
    default_account_id integer,
    company_id integer not null,
    currency_id integer,
    sequence integer,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table account_tax (
    id serial primary key,
    name jsonb not null,
    type_tax_use varchar not null,
    tax_scope varchar,
    amount_type varchar not null,
    active boolean,
    company_id integer not null,
    sequence integer not null,
    amount numeric not null,
    description jsonb,
    price_include boolean,
    include_base_amount boolean,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table account_payment_term (
    id serial primary key,
    name jsonb not null,
    active boolean,
    note jsonb,
    sequence integer not null,
    company_id integer,
    display_on_invoice boolean,
    early_discount boolean,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table account_payment_term_line (
    id serial primary key,
    value varchar not null,
    value_amount numeric,
    delay_type varchar,
    nb_days integer,
    payment_id integer not null,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

-- ---------------------------------------------------------------------------------- sale
create table sale_order (
    id serial primary key,
    name varchar not null,
    company_id integer not null,
    partner_id integer not null,
    state varchar,
    locked boolean,
    client_order_ref varchar,
    commitment_date timestamp without time zone,
    date_order timestamp without time zone not null,
    origin varchar,
    reference varchar,
    require_signature boolean,
    require_payment boolean,
    prepayment_percent double precision,
    validity_date date,
    note text,
    partner_invoice_id integer not null,
    partner_shipping_id integer not null,
    payment_term_id integer,
    currency_id integer,
    currency_rate numeric,
    user_id integer,
    amount_untaxed numeric,
    amount_tax numeric,
    amount_total numeric,
    invoice_status varchar,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone,
    constraint sale_order_date_order_conditional_required
        check ((state = 'sale' and date_order is not null) or state != 'sale')
);

create table sale_order_line (
    id serial primary key,
    order_id integer not null,
    sequence integer,
    company_id integer,
    currency_id integer,
    order_partner_id integer,
    salesman_id integer,
    state varchar,
    display_type varchar,
    is_downpayment boolean,
    is_expense boolean,
    product_id integer,
    name text not null,
    product_uom_qty numeric not null,
    product_uom integer,
    customer_lead double precision not null,
    price_unit numeric not null,
    discount numeric,
    price_subtotal numeric,
    price_tax double precision,
    price_total numeric,
    price_reduce_taxexcl numeric,
    price_reduce_taxinc numeric,
    qty_delivered_method varchar,
    qty_delivered numeric,
    qty_invoiced numeric,
    qty_to_invoice numeric,
    invoice_status varchar,
    untaxed_amount_invoiced numeric,
    untaxed_amount_to_invoice numeric,
    analytic_distribution jsonb,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table account_tax_sale_order_line_rel (
    sale_order_line_id integer not null,
    account_tax_id integer not null,
    primary key (sale_order_line_id, account_tax_id)
);

-- ---------------------------------------------------------------------------------- account moves
create table account_move (
    id serial primary key,
    name varchar,
    ref varchar,
    date date not null,
    state varchar not null,
    move_type varchar not null,
    is_storno boolean,
    journal_id integer not null,
    company_id integer,
    partner_id integer,
    commercial_partner_id integer,
    currency_id integer not null,
    payment_reference varchar,
    invoice_date date,
    invoice_date_due date,
    invoice_origin varchar,
    invoice_payment_term_id integer,
    invoice_user_id integer,
    reversed_entry_id integer,
    amount_untaxed numeric,
    amount_tax numeric,
    amount_total numeric,
    amount_residual numeric,
    amount_untaxed_signed numeric,
    amount_tax_signed numeric,
    amount_total_signed numeric,
    amount_total_in_currency_signed numeric,
    amount_residual_signed numeric,
    payment_state varchar,
    invoice_partner_display_name varchar,
    narration text,
    sequence_prefix varchar,
    sequence_number integer,
    posted_before boolean,
    to_check boolean,                       -- @odoo 17.0
    checked boolean,                        -- @odoo 18.0
    auto_post varchar not null,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table account_move_line (
    id serial primary key,
    move_id integer not null,
    journal_id integer,
    company_id integer,
    company_currency_id integer,
    move_name varchar,
    parent_state varchar,
    date date,
    ref varchar,
    sequence integer,
    account_id integer,
    name varchar,
    debit numeric,
    credit numeric,
    balance numeric,
    amount_currency numeric,
    currency_id integer not null,
    amount_residual numeric,
    amount_residual_currency numeric,
    reconciled boolean,
    matching_number varchar,
    partner_id integer,
    product_id integer,
    product_uom_id integer,
    quantity numeric,
    price_unit numeric,
    discount numeric,
    price_subtotal numeric,
    price_total numeric,
    tax_line_id integer,
    tax_base_amount numeric,
    display_type varchar not null,
    date_maturity date,
    is_downpayment boolean,
    analytic_distribution jsonb,
    create_uid integer,
    create_date timestamp without time zone,
    write_uid integer,
    write_date timestamp without time zone
);

create table account_move_line_account_tax_rel (
    account_move_line_id integer not null,
    account_tax_id integer not null,
    primary key (account_move_line_id, account_tax_id)
);

create table sale_order_line_invoice_rel (
    invoice_line_id integer not null,
    order_line_id integer not null,
    primary key (invoice_line_id, order_line_id)
);

-- @constraints
-- Foreign keys (ondelete as the Odoo fields declare it) and the indexes Odoo creates.
alter table ir_config_parameter add constraint ir_config_parameter_key_uniq unique (key);

alter table res_currency add constraint res_currency_unique_name unique (name);
alter table res_country add constraint res_country_currency_id_fkey
    foreign key (currency_id) references res_currency(id) on delete set null;
alter table res_partner add constraint res_partner_company_id_fkey
    foreign key (company_id) references res_company(id) on delete set null;
alter table res_partner add constraint res_partner_parent_id_fkey
    foreign key (parent_id) references res_partner(id) on delete set null;
alter table res_partner add constraint res_partner_commercial_partner_id_fkey
    foreign key (commercial_partner_id) references res_partner(id) on delete set null;
alter table res_partner add constraint res_partner_user_id_fkey
    foreign key (user_id) references res_users(id) on delete set null;
alter table res_partner add constraint res_partner_country_id_fkey
    foreign key (country_id) references res_country(id) on delete restrict;
alter table res_company add constraint res_company_partner_id_fkey
    foreign key (partner_id) references res_partner(id) on delete restrict;
alter table res_company add constraint res_company_currency_id_fkey
    foreign key (currency_id) references res_currency(id) on delete restrict;
alter table res_company add constraint res_company_parent_id_fkey
    foreign key (parent_id) references res_company(id) on delete set null;
alter table res_users add constraint res_users_login_key unique (login);
alter table res_users add constraint res_users_partner_id_fkey
    foreign key (partner_id) references res_partner(id) on delete restrict;
alter table res_users add constraint res_users_company_id_fkey
    foreign key (company_id) references res_company(id) on delete restrict;
alter table res_currency_rate add constraint res_currency_rate_unique_name_per_day
    unique (name, currency_id, company_id);
alter table res_currency_rate add constraint res_currency_rate_currency_id_fkey
    foreign key (currency_id) references res_currency(id) on delete cascade;
alter table res_currency_rate add constraint res_currency_rate_company_id_fkey
    foreign key (company_id) references res_company(id) on delete set null;

alter table uom_uom add constraint uom_uom_category_id_fkey
    foreign key (category_id) references uom_category(id) on delete restrict;
alter table product_category add constraint product_category_parent_id_fkey
    foreign key (parent_id) references product_category(id) on delete cascade;
alter table product_template add constraint product_template_categ_id_fkey
    foreign key (categ_id) references product_category(id) on delete restrict;
alter table product_template add constraint product_template_uom_id_fkey
    foreign key (uom_id) references uom_uom(id) on delete restrict;
alter table product_template add constraint product_template_uom_po_id_fkey
    foreign key (uom_po_id) references uom_uom(id) on delete restrict;
alter table product_template add constraint product_template_company_id_fkey
    foreign key (company_id) references res_company(id) on delete set null;
alter table product_product add constraint product_product_product_tmpl_id_fkey
    foreign key (product_tmpl_id) references product_template(id) on delete cascade;

alter table account_account add constraint account_account_company_id_fkey
    foreign key (company_id) references res_company(id) on delete restrict;
alter table account_account add constraint account_account_currency_id_fkey
    foreign key (currency_id) references res_currency(id) on delete set null;
alter table account_journal add constraint account_journal_company_id_fkey
    foreign key (company_id) references res_company(id) on delete restrict;
alter table account_journal add constraint account_journal_default_account_id_fkey
    foreign key (default_account_id) references account_account(id) on delete restrict;
alter table account_tax add constraint account_tax_company_id_fkey
    foreign key (company_id) references res_company(id) on delete restrict;
alter table account_payment_term_line add constraint account_payment_term_line_payment_id_fkey
    foreign key (payment_id) references account_payment_term(id) on delete cascade;

alter table sale_order add constraint sale_order_company_id_fkey
    foreign key (company_id) references res_company(id) on delete restrict;
alter table sale_order add constraint sale_order_partner_id_fkey
    foreign key (partner_id) references res_partner(id) on delete restrict;
alter table sale_order add constraint sale_order_partner_invoice_id_fkey
    foreign key (partner_invoice_id) references res_partner(id) on delete restrict;
alter table sale_order add constraint sale_order_partner_shipping_id_fkey
    foreign key (partner_shipping_id) references res_partner(id) on delete restrict;
alter table sale_order add constraint sale_order_currency_id_fkey
    foreign key (currency_id) references res_currency(id) on delete restrict;
alter table sale_order add constraint sale_order_payment_term_id_fkey
    foreign key (payment_term_id) references account_payment_term(id) on delete set null;
alter table sale_order add constraint sale_order_user_id_fkey
    foreign key (user_id) references res_users(id) on delete set null;
create index sale_order_date_order_id_idx on sale_order (date_order desc, id desc);
create index sale_order__partner_id_index on sale_order (partner_id);
create index sale_order__state_index on sale_order (state);
create index sale_order__write_date_index on sale_order (write_date);

alter table sale_order_line add constraint sale_order_line_order_id_fkey
    foreign key (order_id) references sale_order(id) on delete cascade;
alter table sale_order_line add constraint sale_order_line_product_id_fkey
    foreign key (product_id) references product_product(id) on delete restrict;
alter table sale_order_line add constraint sale_order_line_product_uom_fkey
    foreign key (product_uom) references uom_uom(id) on delete restrict;
alter table sale_order_line add constraint sale_order_line_currency_id_fkey
    foreign key (currency_id) references res_currency(id) on delete set null;
alter table sale_order_line add constraint sale_order_line_company_id_fkey
    foreign key (company_id) references res_company(id) on delete set null;
create index sale_order_line__order_id_index on sale_order_line (order_id);
create index sale_order_line__write_date_index on sale_order_line (write_date);
alter table account_tax_sale_order_line_rel add constraint
    account_tax_sale_order_line_rel_sale_order_line_id_fkey
    foreign key (sale_order_line_id) references sale_order_line(id) on delete cascade;
alter table account_tax_sale_order_line_rel add constraint
    account_tax_sale_order_line_rel_account_tax_id_fkey
    foreign key (account_tax_id) references account_tax(id) on delete cascade;

alter table account_move add constraint account_move_journal_id_fkey
    foreign key (journal_id) references account_journal(id) on delete restrict;
alter table account_move add constraint account_move_company_id_fkey
    foreign key (company_id) references res_company(id) on delete restrict;
alter table account_move add constraint account_move_partner_id_fkey
    foreign key (partner_id) references res_partner(id) on delete restrict;
alter table account_move add constraint account_move_currency_id_fkey
    foreign key (currency_id) references res_currency(id) on delete restrict;
alter table account_move add constraint account_move_invoice_payment_term_id_fkey
    foreign key (invoice_payment_term_id) references account_payment_term(id) on delete restrict;
alter table account_move add constraint account_move_reversed_entry_id_fkey
    foreign key (reversed_entry_id) references account_move(id) on delete set null;
create index account_move__date_index on account_move (date);
create index account_move__write_date_index on account_move (write_date);

alter table account_move_line add constraint account_move_line_move_id_fkey
    foreign key (move_id) references account_move(id) on delete cascade;
alter table account_move_line add constraint account_move_line_account_id_fkey
    foreign key (account_id) references account_account(id) on delete restrict;
alter table account_move_line add constraint account_move_line_product_id_fkey
    foreign key (product_id) references product_product(id) on delete restrict;
alter table account_move_line add constraint account_move_line_currency_id_fkey
    foreign key (currency_id) references res_currency(id) on delete restrict;
alter table account_move_line add constraint account_move_line_partner_id_fkey
    foreign key (partner_id) references res_partner(id) on delete restrict;
alter table account_move_line add constraint account_move_line_tax_line_id_fkey
    foreign key (tax_line_id) references account_tax(id) on delete restrict;
create index account_move_line__move_id_index on account_move_line (move_id);
create index account_move_line__write_date_index on account_move_line (write_date);
alter table account_move_line_account_tax_rel add constraint
    account_move_line_account_tax_rel_account_move_line_id_fkey
    foreign key (account_move_line_id) references account_move_line(id) on delete cascade;
alter table account_move_line_account_tax_rel add constraint
    account_move_line_account_tax_rel_account_tax_id_fkey
    foreign key (account_tax_id) references account_tax(id) on delete cascade;

alter table sale_order_line_invoice_rel add constraint sale_order_line_invoice_rel_invoice_line_id_fkey
    foreign key (invoice_line_id) references account_move_line(id) on delete cascade;
alter table sale_order_line_invoice_rel add constraint sale_order_line_invoice_rel_order_line_id_fkey
    foreign key (order_line_id) references sale_order_line(id) on delete cascade;
create index sale_order_line_invoice_rel_order_line_id_idx
    on sale_order_line_invoice_rel (order_line_id);
