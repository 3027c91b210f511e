-- The demo's small shop: customers, products, orders and their items.
-- Set up as `tidewater check` asks, so that it prints no warning on it:
-- the WAL a replication slot may hold is bounded (the server setting;
-- size it to the outage to survive), and the tables with columns that can
-- be stored out of line (text, jsonb, arrays) log their whole old row.
ALTER SYSTEM SET max_slot_wal_keep_size = '10GB';
DO $$ BEGIN PERFORM pg_reload_conf(); END $$;
CREATE TABLE customers (
    id         serial PRIMARY KEY,
    name       text NOT NULL,
    email      varchar(120) UNIQUE,
    country    char(2),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE products (
    id         serial PRIMARY KEY,
    sku        uuid NOT NULL DEFAULT gen_random_uuid(),
    title      text NOT NULL,
    price      numeric(10,2) NOT NULL,
    tags       text[],
    attributes jsonb
);
CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers,
    status      text NOT NULL DEFAULT 'new',
    total       numeric(12,2) NOT NULL DEFAULT 0,
    placed_on   date NOT NULL DEFAULT current_date,
    updated_at  timestamp NOT NULL DEFAULT now()
);
CREATE TABLE order_items (
    order_id   bigint NOT NULL REFERENCES orders ON DELETE CASCADE,
    line       int NOT NULL,
    product_id int NOT NULL REFERENCES products,
    quantity   int2 NOT NULL,
    unit_price numeric(10,2) NOT NULL,
    PRIMARY KEY (order_id, line)
);
ALTER TABLE customers REPLICA IDENTITY FULL;
ALTER TABLE products REPLICA IDENTITY FULL;
ALTER TABLE orders REPLICA IDENTITY FULL;

INSERT INTO customers (name, email, country)
SELECT 'customer ' || g, 'c' || g || '@example.org', (ARRAY['DE','FR','US','BR','JP'])[1 + g % 5]
FROM generate_series(1, 5000) g;

INSERT INTO products (title, price, tags, attributes)
SELECT 'product ' || g, round((5 + random() * 195)::numeric, 2),
       ARRAY['tag' || (g % 7), 'tag' || (g % 11)],
       jsonb_build_object('weight_g', 100 + g % 900, 'color', (ARRAY['red','green','blue'])[1 + g % 3])
FROM generate_series(1, 500) g;

INSERT INTO orders (customer_id, status, placed_on)
SELECT 1 + (g * 7919) % 5000, (ARRAY['new','paid','shipped','delivered'])[1 + g % 4],
       date '2025-01-01' + (g % 365)
FROM generate_series(1, 50000) g;

INSERT INTO order_items (order_id, line, product_id, quantity, unit_price)
SELECT o.id, l, 1 + (o.id * 31 + l) % 500, 1 + (o.id + l) % 4, p.price
FROM orders o CROSS JOIN generate_series(1, 3) l
JOIN products p ON p.id = 1 + (o.id * 31 + l) % 500;

UPDATE orders o SET total = s.total
FROM (SELECT order_id, sum(quantity * unit_price) AS total FROM order_items GROUP BY 1) s
WHERE s.order_id = o.id;
